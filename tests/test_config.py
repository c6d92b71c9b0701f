"""Configs: YAML plus dotted overrides, with errors that name the key, the source and the fix."""

from dataclasses import dataclass, field

import pytest

from tirl.config import ConfigError, load_config, save_config


@dataclass
class Trainer:
    lr: float = 1e-6
    steps: int = 10


@dataclass
class Rollout:
    n: int = 4
    style: str = "retool"


@dataclass
class Cfg:
    trainer: Trainer = field(default_factory=Trainer)
    rollout: Rollout = field(default_factory=Rollout)
    seed: int = 0


def test_defaults_file_then_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("trainer:\n  lr: 0.001\nrollout:\n  n: 2\n")
    cfg = load_config(Cfg, f, ["rollout.n=8", "seed=3"])
    assert cfg == Cfg(Trainer(lr=0.001, steps=10), Rollout(n=8), seed=3)
    assert isinstance(cfg.trainer, Trainer)


def test_unknown_key_in_file_names_file_line_and_allowed_keys(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("trainer:\n  lr: 0.1\n  stepz: 3\n")
    with pytest.raises(ConfigError) as e:
        load_config(Cfg, f)
    msg = str(e.value)
    assert f"{f}:3" in msg and "trainer.stepz" in msg and "lr, steps" in msg


def test_unknown_override_names_allowed_keys():
    with pytest.raises(ConfigError, match=r"override 'rollout.m=3'.*unknown key 'rollout.m'.*n, style"):
        load_config(Cfg, None, ["rollout.m=3"])
    with pytest.raises(ConfigError, match="allowed keys: trainer, rollout, seed"):
        load_config(Cfg, None, ["bogus=1"])


def test_wrong_type_is_refused():
    with pytest.raises(ConfigError, match="bad value for 'trainer.lr'"):
        load_config(Cfg, None, ["trainer.lr=fast"])
    with pytest.raises(ConfigError, match="bad value for 'rollout.n'"):
        load_config(Cfg, None, ["rollout.n=2.5"])


def test_malformed_override_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not of the form key=value"):
        load_config(Cfg, None, ["trainer.lr"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(Cfg, tmp_path / "missing.yaml")


def test_saved_config_loads_back(tmp_path):
    cfg = load_config(Cfg, None, ["trainer.steps=7"])
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(Cfg, tmp_path / "config.yaml") == cfg


def test_an_override_in_the_config_position_is_an_override():
    # `tirl sandbox check memory_mb=512`: argparse hands the first key=value over as CONFIG.
    cfg = load_config(Cfg, "rollout.n=5", ["seed=2"])
    assert cfg.rollout.n == 5 and cfg.seed == 2


def test_resume_with_changed_settings_names_them_and_force_overrides(tmp_path):
    from tirl.config import ConfigError, check_resume, save_config
    from tirl.train.rl import RLConfig

    cfg = RLConfig()
    save_config(cfg, tmp_path / "config.yaml")
    more_steps = load_config(RLConfig, None, ["trainer.steps=40"])
    check_resume(tmp_path, more_steps)  # more steps is what a resume is for
    changed = load_config(RLConfig, None, ["rollout.temperature=0.5", "algorithm.clip_high=0.3"])
    with pytest.raises(ConfigError) as e:
        check_resume(tmp_path, changed)
    assert "algorithm.clip_high: 0.28 -> 0.3" in str(e.value) and "rollout.temperature: 1.0 -> 0.5" in str(e.value)
    check_resume(tmp_path, changed, force=True)


def test_a_mapping_in_yaml_replaces_the_default_mapping(tmp_path):
    """`mix: {text: 1.0}` means text traces only; a key-by-key merge kept the default's code and fix."""
    from tirl.train.sft import SFTConfig

    path = tmp_path / "text.yaml"
    path.write_text("data:\n  mix: {text: 1.0}\n  max_length: 99\n")
    cfg = load_config(SFTConfig, path)
    assert cfg.data.mix == {"text": 1.0}
    assert cfg.data.max_length == 99 and cfg.data.eval_fraction == SFTConfig().data.eval_fraction  # sections merge
    assert load_config(SFTConfig, None, ["data.mix={text: 1.0}"]).data.mix == {"text": 1.0}
    # a dotted key into the mapping still sets that one entry
    assert load_config(SFTConfig, path, ["data.mix.code=0.5"]).data.mix == {"text": 1.0, "code": 0.5}


def test_a_text_override_is_the_text_as_typed_even_when_yaml_reads_it_otherwise():
    # `{problem}` is a YAML mapping and a leading backtick cannot start a YAML token: both used to fail
    # (a raw yaml traceback for the second) although the field is plain text.
    prompt = "Solve it.\n```python\n...\n```\nAnswer in \\boxed{}."
    cfg = load_config(Cfg, None, ["rollout.style={problem}", "rollout.n=8"])
    assert cfg.rollout.style == "{problem}" and cfg.rollout.n == 8
    assert load_config(Cfg, None, [f"rollout.style={prompt}"]).rollout.style == prompt
    assert load_config(Cfg, None, ["rollout.style=''"]).rollout.style == ""


def test_an_unreadable_override_of_a_number_is_one_line_naming_it():
    with pytest.raises(ConfigError) as e:
        load_config(Cfg, None, ["seed=`3"])
    assert "override 'seed=`3'" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("text,line,what", [
    ("trainer:\n  lr: [1, 2\nrollout:\n  n: 2\n", 3, "did not find expected ',' or ']'"),
    ("trainer:\n  lr: 0.1\n   steps: 3\n", 3, "mapping values are not allowed in this context"),
    ("trainer:\n\tlr: 0.1\n", 2, "a tab (YAML indents with spaces)"),
    ("seed: 1\nseed: 2\n", 2, "found duplicate key seed"),
])
def test_malformed_yaml_names_file_and_line_in_one_line(tmp_path, text, line, what):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(Cfg, f)
    msg = str(e.value)
    assert msg.startswith(f"{f}:{line}: not valid YAML: ") and what in msg and "\n" not in msg, msg


def test_an_unknown_key_names_the_closest_known_keys(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key 'trainer.step'; did you mean trainer.steps\?; allowed"):
        load_config(Cfg, None, ["trainer.step=5"])
    with pytest.raises(ConfigError, match=r"unknown key 'lr'; did you mean trainer.lr\?"):
        load_config(Cfg, None, ["lr=1e-5"])
    with pytest.raises(ConfigError) as e:  # nothing close: no guess
        load_config(Cfg, None, ["rollout.m=3"])
    assert "did you mean" not in str(e.value)
    f = tmp_path / "c.yaml"
    f.write_text("trainer:\n  stepz: 3\n")
    with pytest.raises(ConfigError, match=rf"{f}:2: unknown key 'trainer.stepz'; did you mean trainer.steps\?"):
        load_config(Cfg, f)


def test_a_trl_or_verl_name_is_answered_with_tirls_key_never_taken(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key 'num_generations'; TRL's num_generations is tirl's rollout.n"):
        load_config(Cfg, None, ["num_generations=8"])
    # OmegaConf names only the first unknown part; the hint reads the whole key the user wrote
    verl = r"'actor_rollout_ref'; verl's actor_rollout_ref.rollout.n is tirl's rollout.n"
    with pytest.raises(ConfigError, match=verl):
        load_config(Cfg, None, ["actor_rollout_ref.rollout.n=8"])
    f = tmp_path / "verl.yaml"
    f.write_text("actor_rollout_ref:\n  rollout:\n    n: 8\n")
    with pytest.raises(ConfigError, match=r"verl's actor_rollout_ref.rollout.n is tirl's rollout.n"):
        load_config(Cfg, f)
    with pytest.raises(ConfigError) as e:  # a name whose tirl key this schema lacks is not suggested
        load_config(Cfg, None, ["beta=0.1"])
    assert "algorithm.kl_coef" not in str(e.value)
