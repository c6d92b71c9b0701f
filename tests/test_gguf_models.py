"""GGUF models (issue 18): they load de-quantised, save as ordinary float checkpoints, and `model.path=DIR
model.gguf_file=NAME` loads the tokenizer from the GGUF file too — for `tirl sft` and `tirl train`."""

import json

import torch

from fixtures_models import tiny_corpus, tiny_gguf  # noqa: F401 - pytest fixture
from tirl.config import load_config
from tirl.models import load_model, load_tokenizer


def test_gguf_model_saves_as_a_float_checkpoint_that_loads_back_identically(tiny_gguf, tmp_path):
    folder, name = tiny_gguf
    model = load_model(folder, gguf_file=name, device="cpu")
    model.save_pretrained(tmp_path / "saved")  # raised "quantized with gguf and is not serializable"
    assert "quantization_config" not in json.loads((tmp_path / "saved" / "config.json").read_text())
    again = load_model(tmp_path / "saved", device="cpu")
    ids = torch.tensor([[5, 17, 42, 9, 33]])
    with torch.no_grad():
        torch.testing.assert_close(again(ids).logits, model(ids).logits)
    assert all(p.dtype == torch.float32 for p in again.parameters())


def test_tokenizer_comes_from_the_gguf_file_in_a_directory(tiny_gguf):
    folder, name = tiny_gguf
    tok = load_tokenizer(folder, gguf_file=name)
    text = "What is 12 times 34? <code>"
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text


def _sft_cfg(folder, name, extra=()):
    from tirl.train.sft import SFTConfig

    return load_config(SFTConfig, None, [f"model.path={folder}", f"model.gguf_file={name}", 'prompt.system_prompt=""',
                                         "data.max_length=96", "data.task.train_size=16", "trainer.steps=2",
                                         "trainer.batch_size=4", "trainer.micro_batch_size=4", "trainer.eval_every=0",
                                         *extra])


def test_sft_from_a_gguf_directory_saves_checkpoint_and_model(tiny_gguf, tmp_path):
    from tirl.train.sft import train_sft

    folder, name = tiny_gguf
    out = train_sft(_sft_cfg(folder, name), tmp_path / "sft")
    model = load_model(out["model"], device="cpu")  # a plain float directory `tirl train` can take
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert (tmp_path / "sft" / "checkpoints" / "step-000002" / "COMPLETE").is_file()


def test_train_from_a_gguf_directory_checkpoints_and_resumes(tiny_gguf, tmp_path):
    from tirl.train.rl import RLConfig, train_rl

    folder, name = tiny_gguf
    over = [f"model.path={folder}", f"model.gguf_file={name}", 'prompt.system_prompt=""', "rollout.n=2",
            "rollout.max_new_tokens=12", "trainer.prompts_per_step=2", "trainer.save_every=1", "data.test_size=2",
            "trainer.eval_size=2", "data.train_size=20", "trainer.optim.lr=1e-3"]
    train_rl(load_config(RLConfig, None, over + ["trainer.steps=1"]), tmp_path / "rl")
    assert (tmp_path / "rl" / "checkpoints" / "step-000001" / "COMPLETE").is_file()
    # resuming loads the checkpoint (a float directory), never the GGUF file again
    out = train_rl(load_config(RLConfig, None, over + ["trainer.steps=2"]), tmp_path / "rl", resume=True)
    assert out["checkpoint"].endswith("step-000002")
