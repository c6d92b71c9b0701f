"""`tirl sft` / `tirl train` take the prompt and tool-loop settings saved with the model they start from."""

import argparse
import json

from tirl.train.commands import training_config


def _model_dir(tmp_path):
    d = tmp_path / "sft_model"
    d.mkdir()
    (d / "tirl.json").write_text(json.dumps({
        "prompt": {"style": "torl", "system_prompt": "Be brief.", "prompt_template": "Q: {problem}", "chat": False},
        "rollout": {"max_tool_calls": 3, "max_output_chars": 512, "max_output_tokens": 0, "error_lines": 2,
                    "on_tool_cap": "stop"}}))
    return d


def _args(*overrides):
    return argparse.Namespace(config=None, overrides=list(overrides))


def test_train_prompts_the_model_as_its_sft_did(tmp_path, capsys):
    from tirl.train.rl import RLConfig

    cfg = training_config(RLConfig, _args(f"model.path={_model_dir(tmp_path)}"))
    assert (cfg.prompt.style, cfg.prompt.system_prompt, cfg.prompt.prompt_template, cfg.prompt.chat) == (
        "torl", "Be brief.", "Q: {problem}", False)
    assert (cfg.rollout.max_tool_calls, cfg.rollout.on_tool_cap) == (3, "stop")
    assert "tirl.json" in capsys.readouterr().err  # the user is told where the settings came from


def test_explicit_settings_still_win(tmp_path):
    from tirl.train.rl import RLConfig

    cfg = training_config(RLConfig, _args(f"model.path={_model_dir(tmp_path)}", "prompt.system_prompt=Other.",
                                          "rollout.max_tool_calls=1"))
    assert cfg.prompt.system_prompt == "Other." and cfg.rollout.max_tool_calls == 1
    assert cfg.prompt.prompt_template == "Q: {problem}"


def test_sft_takes_the_prompt_only_and_plain_models_change_nothing(tmp_path):
    from tirl.train.rl import RLConfig
    from tirl.train.sft import SFTConfig

    cfg = training_config(SFTConfig, _args(f"model.path={_model_dir(tmp_path)}"))
    assert cfg.prompt.system_prompt == "Be brief."
    plain = tmp_path / "plain"
    plain.mkdir()
    assert training_config(RLConfig, _args(f"model.path={plain}")) == training_config(RLConfig, _args(
        f"model.path={plain}"))
    assert training_config(RLConfig, _args(f"model.path={plain}")).prompt == RLConfig().prompt


def test_the_printed_summary_is_strict_json_with_nan_as_null(tmp_path, monkeypatch, capsys):
    import dataclasses
    import sys
    import types

    from tirl.train.commands import train
    from tirl.train.rl import RLConfig

    def reject(constant):
        raise ValueError(f"not JSON: {constant}")

    fake = types.ModuleType("fake_trainer")
    fake.RLConfig, fake.validate = RLConfig, lambda cfg: None
    fake.train_rl = lambda cfg, run_dir, resume, force: {"eval_end": {"avg@1": float("nan")}, "wall_s": float("inf")}
    monkeypatch.setitem(sys.modules, "fake_trainer", fake)
    command = dataclasses.replace(train, trainer="fake_trainer:RLConfig:validate:train_rl")
    args = argparse.Namespace(config=None, overrides=[], run_dir=str(tmp_path / "run"), resume=False, force=False)
    assert command.run(args) == 0
    assert json.loads(capsys.readouterr().out, parse_constant=reject) == {"eval_end": {"avg@1": None}, "wall_s": None}
