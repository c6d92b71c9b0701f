"""TRL's and verl's names for tirl's keys (`tirl.foreign_keys`): every tirl key named there exists."""

from tirl.config import dotted_keys
from tirl.foreign_keys import FOREIGN_KEYS, foreign_key


def test_every_tirl_key_in_the_table_exists_in_the_rl_config():
    from tirl.train.rl import RLConfig

    known = set(dotted_keys(RLConfig))
    assert [f for f in FOREIGN_KEYS if f.key not in known] == []
    assert len({f.name for f in FOREIGN_KEYS}) == len(FOREIGN_KEYS)  # one entry per foreign name


def test_trl_names_are_found_at_any_depth_and_verl_keys_as_written():
    assert foreign_key("num_generations").key == "rollout.n"
    assert foreign_key("trainer.learning_rate").key == "trainer.optim.lr"
    assert foreign_key("algorithm.adv_estimator").key == "algorithm.name"
    assert foreign_key("rollout.n") is None and foreign_key("other.adv_estimator") is None
