"""`tirl report` over hand-written run directories: files, plots, escaping, overlays, expansion, CLI."""

import base64
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from matplotlib.image import imread

from tirl.report.page import segments, write_report
from tirl.report.runs import load_run, purpose_split


def _call(code, output, status="ok", at=0):
    return {"code": code, "status": status, "output": output, "duration_s": 0.01, "span": [at, at + 3]}


def _sample(step, correct, text, calls=()):
    return {"step": step, "grade": {"score": 1.0 if correct else -1.0, "correct": correct, "extracted": "1",
                                    "reference": "1", "reason": "ok" if correct else "mismatch"},
            "prompt_ids": [1, 2], "response_ids": [3] * 20, "loss_mask": [1] * 20, "logprobs": [0.0] * 20,
            "tool_calls": list(calls), "finish_reason": "answer", "text": text, "group_index": 0,
            "sample_index": 0, "tool_cap_hit": False, "unclosed_code": False}


GOOD = ("Multiply.\n<code>\n```python\nprint(123 * 456)\n```\n</code>\n<interpreter>\n56088\n</interpreter>\n\n"
        "<answer>\n\\boxed{56088}\n</answer>")
FIXED = ("<code>\n```python\nprint(x)\n```\n</code>\n<interpreter>\nNameError: name 'x' is not defined\n"
         "</interpreter>\n\n<code>\n```python\nx = 7 ** 5\nprint(x)\n```\n</code>\n<interpreter>\n16807\n"
         "</interpreter>\n\n<answer>\n\\boxed{16807}\n</answer>")
EVIL = "I think <script>alert('x')</script> 5 & 6 <answer>\n\\boxed{11}\n</answer>"


def make_run(path: Path, steps: int = 9, purposes: bool = True, acc_offset: float = 0.0) -> Path:
    path.mkdir(parents=True)
    with open(path / "metrics.jsonl", "w") as f:
        for s in range(1, steps + 1):
            m = {"step": s, "reward/accuracy": min(1.0, 0.1 * s + acc_offset), "reward/mean": 0.0,
                 "response/length_mean": 40.0 + s, "tool/code_ratio": s / steps, "tool/calls_mean": s / steps,
                 "tool/pass_rate": None if s == 1 else 0.9, "tool/first_call_pos": 0.3,
                 "tool/self_correction": None, "tool/executed_calls": float(s)}
            if s % 3 == 0:  # held-out evaluation only on some steps
                m["eval/accuracy"] = 0.1 * s
            if purposes:
                late = s > 2 * steps // 3
                m.update({f"purpose/{p}": 0.0 for p in ("symbolic", "numeric", "simulation", "other",
                                                        "invalid", "enumeration")})
                m.update({"purpose/arithmetic": 0.5 if late else 1.0, "purpose/verification": 0.5 if late else 0.0})
            f.write(json.dumps(m) + "\n")
    with open(path / "samples.jsonl", "w") as f:
        for row in (_sample(1, True, GOOD, [_call("print(123 * 456)", "56088")]),
                    _sample(1, False, EVIL),
                    _sample(steps, True, FIXED, [_call("print(x)", "NameError: name 'x' is not defined", "error"),
                                                 _call("x = 7 ** 5\nprint(x)", "16807", at=9)])):
            f.write(json.dumps(row) + "\n")
    summary = {"eval_start": {"eval/accuracy": 0.05, "eval/pass_rate": None}, "eval_end": {"eval/accuracy": 0.9},
               "steps": steps, "wall_s": 12.5}
    (path / "summary.json").write_text(json.dumps(summary))
    return path


def _pngs_in(page: str) -> list[bytes]:
    return [base64.b64decode(b) for b in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]


def _has_color(png: Path, rgb: tuple[int, int, int], tol: int = 12) -> bool:
    img = imread(png)[..., :3] * 255
    return bool((abs(img - rgb).max(axis=-1) <= tol).any())


def test_report_from_a_synthetic_run(tmp_path):
    run = make_run(tmp_path / "run")
    html_path = write_report([run], tmp_path / "out", title="My <run>", extra={"rl_accuracy": 0.93, "note": "<b>"})
    page = html_path.read_text()
    assert html_path == tmp_path / "out" / "report.html"

    files = sorted((tmp_path / "out" / "plots").glob("*.png"))
    names = {p.stem for p in files}
    assert {"accuracy", "length", "code_ratio", "pass_rate", "calls", "first_call", "purposes"} <= names
    for p in files:  # valid images, and the page embeds exactly these bytes
        h, w, _ = imread(p).shape
        assert h > 200 and w > 400
    assert sorted(_pngs_in(page)) == sorted(p.read_bytes() for p in files)

    # self-correction is null (undefined) at every step: no panel, one line names it instead of crashing;
    # an RL run without loss figures draws no loss panels either
    assert "self_correction" not in names and not names & {"sft_loss", "policy_loss", "kl", "entropy"}
    assert re.search(r"Not drawn \(no data in any run\):[^<]*self-correction", page)
    assert "<img" not in page.split("Not drawn")[1].split("</p>")[0]
    # headline figures and the title, escaped
    assert "My &lt;run&gt;" in page and "0.93" in page and "&lt;b&gt;" in page
    # summary table: nested keys flattened, None shown as a dash
    assert "eval_end.eval/accuracy" in page and "12.5" in page


def test_samples_render_code_and_output_distinctly_and_escaped(tmp_path):
    page = write_report([make_run(tmp_path / "run")], tmp_path / "out").read_text()
    assert '<span class="seg-code">print(123 * 456)</span>' in page
    assert '<span class="seg-output">56088</span>' in page
    assert '<span class="seg-error">NameError: name &#x27;x&#x27; is not defined</span>' in page
    assert '<span class="seg-code">x = 7 ** 5\nprint(x)</span>' in page
    assert '<span class="seg-output">16807</span>' in page
    assert "<script>" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; 5 &amp; 6" in page
    # first and last step, correct and wrong where both exist
    assert page.count('class="sample"') == 3
    assert page.count('<b class="right">correct</b>') == 2 and page.count('<b class="wrong">wrong</b>') == 1


def test_segments_keep_all_text_in_order():
    calls = [_call("print(x)", "NameError: name 'x' is not defined", "error"), _call("x = 7 ** 5\nprint(x)", "16807")]
    segs, missing = segments(FIXED, calls)
    assert "".join(p for _, p in segs) == FIXED
    assert [k for k, _ in segs if k != "text"] == ["code", "error", "code", "output"]
    assert missing == []
    segs, missing = segments("no code here", [_call("print(1)", "1")])
    assert segs == [("text", "no code here")] and len(missing) == 1


def test_two_runs_are_overlaid_with_their_labels(tmp_path):
    a = make_run(tmp_path / "a")
    b = make_run(tmp_path / "b", acc_offset=0.3)
    red = (214, 39, 40)  # the second run's colour (tirl.report.plots.COLORS[1])
    one = write_report([a], tmp_path / "one")
    assert not _has_color(tmp_path / "one" / "plots" / "accuracy.png", red)
    page = write_report([a, b], tmp_path / "two", labels=["tool <RL>", "text RL"]).read_text()
    for stem in ("accuracy", "length", "code_ratio"):
        assert _has_color(tmp_path / "two" / "plots" / f"{stem}.png", red), stem
    assert "<th>tool &lt;RL&gt;</th><th>text RL</th>" in page
    assert one.exists()


def test_labels_must_match_the_runs(tmp_path):
    a = make_run(tmp_path / "a")
    with pytest.raises(ValueError, match="1 label"):
        write_report([a, a], tmp_path / "out", labels=["only one"])
    with pytest.raises(FileNotFoundError, match="no metrics.jsonl"):
        write_report([tmp_path / "missing"], tmp_path / "out")


def test_a_demo_style_parent_expands_into_its_runs(tmp_path):
    demo = tmp_path / "demo"
    make_run(demo / "rl")
    make_run(demo / "text_rl", purposes=False)
    (demo / "sft").mkdir()
    (demo / "sft" / "metrics.jsonl").write_text(
        "".join(json.dumps({"step": s, "loss/sft": 3.0 / s, "train/lr": 1e-3}) + "\n" for s in range(1, 6)))
    (demo / "summary.json").write_text(json.dumps({"rl_accuracy": 0.9}))
    page = write_report([demo], demo).read_text()
    assert (demo / "report.html").exists()
    assert "<th>rl</th><th>sft</th><th>text_rl</th>" in page
    assert (demo / "plots" / "sft_loss.png").exists()
    # the SFT run has no samples (tirl sft keeps none: not flagged as a problem) and no summary (flagged)
    assert "sft: samples.jsonl is missing" not in page and "sft: summary.json is missing" in page
    assert "sft: no executed code to classify" in page


def test_purposes_early_vs_late_from_metrics_and_from_samples(tmp_path):
    run = load_run(make_run(tmp_path / "a"), "a")
    early, late, source = purpose_split(run)
    assert source == "purpose/* metrics"
    assert early["arithmetic"] == 1.0 and early["verification"] == 0.0
    assert late["arithmetic"] == 0.5 and late["verification"] == 0.5  # steps 7-9, weights 7, 8, 9

    run = load_run(make_run(tmp_path / "b", purposes=False), "b")
    early, late, source = purpose_split(run)
    assert source.startswith("samples.jsonl")
    assert early == {**{p: 0.0 for p in early}, "arithmetic": 1.0}  # step 1: print(123 * 456)
    assert late["invalid"] == 0.0 and late["other"] == 0.5 and late["arithmetic"] == 0.5  # print(x); x = 7 ** 5


def test_runs_with_nothing_finite_do_not_crash(tmp_path):
    run = tmp_path / "empty"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1, "reward/accuracy": null}\nnot json\n')
    page = write_report([run], tmp_path / "out").read_text()
    assert re.search(r"Not drawn \(no data in any run\): accuracy", page) and "metrics.jsonl:2 is not JSON" in page
    assert not list((tmp_path / "out" / "plots").glob("*.png"))


def test_cli_report_through_a_subprocess(tmp_path):
    run = make_run(tmp_path / "run")
    r = subprocess.run([sys.executable, "-m", "tirl.cli", "report", str(run), "--title", "smoke"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(run / "report.html")
    assert (run / "plots" / "accuracy.png").exists() and "<title>smoke</title>" in (run / "report.html").read_text()
    r = subprocess.run([sys.executable, "-m", "tirl.cli", "report", str(tmp_path / "nope")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "no metrics.jsonl" in r.stderr and len(r.stderr.splitlines()) == 1


def _optim_run(path, ppo=False):
    """An RL run with the optimisation figures (PPO adds the critic's)."""
    path.mkdir(parents=True)
    with open(path / "metrics.jsonl", "w") as f:
        for s in range(1, 6):
            m = {"step": s, "reward/accuracy": 0.1 * s, "loss/policy": -0.01 * s, "kl/mean": 0.001 * s,
                 "entropy/mean": 1.0 - 0.1 * s, "policy/clipfrac": 0.02, "train/grad_norm": 1.5}
            if ppo:
                m.update({"loss/value": 0.5 / s, "critic/grad_norm": 2.0})
            f.write(json.dumps(m) + "\n")
    (path / "summary.json").write_text(json.dumps({"steps": 5, "eval_end": {"eval/accuracy": 0.5}}))
    return path


def test_optimisation_panels_with_readable_labels(tmp_path):
    grpo = _optim_run(tmp_path / "grpo")
    out = tmp_path / "out"
    page = write_report([grpo], out).read_text()
    names = {p.stem for p in (out / "plots").glob("*.png")}
    assert {"accuracy", "policy_loss", "kl", "entropy", "clipfrac", "grad_norm"} <= names
    assert "value_loss" not in names and "sft_loss" not in names  # GRPO has no critic, no SFT: not drawn
    assert "value loss (ppo critic)" in page.split("Not drawn")[1]
    # the summary table shows readable names, the raw key beside them in small type
    assert "held-out accuracy (end)" in page and '<code class="key">eval_end.eval/accuracy</code>' in page
    page = write_report([_optim_run(tmp_path / "ppo", ppo=True)], tmp_path / "out2").read_text()
    assert (tmp_path / "out2" / "plots" / "value_loss.png").exists()


def test_sft_loss_panel_has_train_and_held_out_loss(tmp_path):
    run = tmp_path / "sft"
    run.mkdir()
    rows = [{"step": s, "loss/sft": 2.0 / s, **({"eval/loss": 2.2 / s} if s % 2 == 0 else {})} for s in range(1, 7)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "summary.json").write_text("{}")
    out = tmp_path / "out"
    page = write_report([run], out).read_text()
    png = out / "plots" / "sft_loss.png"
    assert png.exists() and "SFT loss" in page
    # two series in one panel: the legend's default blue (train) and red (held-out points) both appear
    assert _has_color(png, (0x1F, 0x77, 0xB4)) and _has_color(png, (0xD6, 0x27, 0x28))
    assert not (out / "plots" / "accuracy.png").exists()


def test_an_eval_run_directory_is_read_as_a_score_table(tmp_path):
    ev = tmp_path / "eval"
    ev.mkdir()
    (ev / "eval_config.json").write_text("{}")
    scores = {"problems": 30, "samples": 120, "avg@4": 0.25, "pass@1": 0.25, "pass@4": 0.6, "maj@4": 0.3,
              "no_answer_ratio": 0.1, "tool/code_ratio": 0.8}
    (ev / "summary.json").write_text(json.dumps({"n": 4, "benchmarks": {"aime24": scores}, "overall": scores}))
    train = make_run(tmp_path / "parent" / "rl")
    page = write_report([tmp_path / "parent", ev], tmp_path / "out").read_text()
    table = page.split("Evaluations (tirl eval)")[1]
    assert "<td>aime24</td>" in table and "<td>0.6</td>" in table and "share of responses with code" in table
    assert "<td>overall</td>" not in table  # one benchmark: overall would repeat it
    assert "evaluation)" in page and "Training curves" in page  # both kinds on one page
    assert train.exists()
    # an eval directory alone: no training sections, no crash
    page = write_report([ev], tmp_path / "out2").read_text()
    assert "Training curves" not in page and "<td>aime24</td>" in page


def test_readable_names_for_known_nested_and_unknown_keys():
    from tirl.report.labels import readable

    assert readable("policy/clipfrac_high") == "clipped above (ratio > 1 + ε)"
    assert readable("eval_end.eval/reward_mean") == "held-out mean reward (end)"
    assert readable("eval/pass_rate") == "held-out code pass rate"
    assert readable("rollout/gen_time_s") == "rollout: gen time s"  # a new metric is never blank


def _timed_run(path: Path) -> Path:
    """An RL run that logs reward components, the learning rate, throughput and the time split."""
    path.mkdir(parents=True)
    with open(path / "metrics.jsonl", "w") as f:
        for s in range(1, 5):
            f.write(json.dumps({"step": s, "reward/accuracy": 0.2 * s, "reward/mean": 0.1 * s, "reward/std": 0.5,
                                "reward/correctness": 0.2 * s, "reward/format": 1.0, "train/lr": 1e-4 * s,
                                "throughput/tokens_per_s": 300.0 + s, "time/generation_s": 2.0,
                                "time/sandbox_s": 0.5, "time/train_s": 1.0, "time/step_s": 4.0}) + "\n")
    return path


def test_the_page_lays_plots_out_in_a_grid_that_fits_1280px(tmp_path):
    page = write_report([make_run(tmp_path / "run")], tmp_path / "out").read_text()
    css = page.split("<style>")[1].split("</style>")[0]
    assert ".grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(370px,1fr))" in css
    # 3 x 370 px and the gaps fit the 1240 px page; tables scroll in their own box, never the page
    assert "max-width:1240px" in css and ".wide{max-width:100%;overflow-x:auto}" in css
    grid = page.split('<div class="grid">')[1].split("</div>")[0]
    assert grid.count("<figure>") == page.split("<h2>What the code is for")[0].count("<figure>") >= 5
    assert "<table>" not in page.replace('<div class="wide"><table>', "")


def test_reward_lr_throughput_and_time_plots_exist_only_with_their_metrics(tmp_path):
    page = write_report([_timed_run(tmp_path / "timed")], tmp_path / "out").read_text()
    names = {p.stem for p in (tmp_path / "out" / "plots").glob("*.png")}
    assert {"reward", "lr", "throughput", "time_split"} <= names
    assert "Reward and its components" in page and 'alt="Time split of a training step' in page
    assert len(_pngs_in(page)) == len(names)
    # a run without them: no such figure (not an empty one), the page says which were left out
    page = write_report([make_run(tmp_path / "plain")], tmp_path / "out2").read_text()
    names = {p.stem for p in (tmp_path / "out2" / "plots").glob("*.png")}
    assert not names & {"lr", "throughput", "time_split"} and "reward" in names  # make_run logs reward/mean
    assert "Reward and its components" not in page and 'alt="Reward"' in page
    assert re.search(r"Not drawn \(no data in any run\):[^<]*learning rate[^<]*throughput[^<]*time split", page)


def test_samples_carry_their_prompt_decoded_with_the_runs_tokenizer(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    run = make_run(tmp_path / "run")
    words = ["<unk>", "What", "is", "123", "*", "456", "?"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    (run / "base_model").mkdir()
    tok.save(str(run / "base_model" / "tokenizer.json"))
    rows = [json.loads(x) for x in (run / "samples.jsonl").read_text().splitlines()]
    rows += [{**rows[0], "step": 5}, {**rows[1], "step": 5}, {**rows[0], "step": 5}]
    for r in rows:
        r["prompt_ids"] = tok.encode("What is 123 * 456 ?").ids
    (run / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    page = write_report([run], tmp_path / "out").read_text()
    assert page.count('class="sample"') == 6  # more samples than the first and last step's
    assert page.count('<pre class="prompt">What is 123 * 456 ?</pre>') == 6
    assert "Prompt omitted" not in page


def test_report_keeps_another_commands_page_unless_told_to_replace_it(tmp_path):
    from tirl.report.command import page_name

    run = make_run(tmp_path / "run")
    demo_page = '<html><head><meta name="generator" content="tirl demo"></head><body>the demo</body></html>'
    (run / "report.html").write_text(demo_page)
    r = subprocess.run([sys.executable, "-m", "tirl.cli", "report", str(run)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(run / "report_runs.html") and "--replace" in r.stderr
    assert (run / "report.html").read_text() == demo_page  # untouched
    assert page_name(run, replace=True) == "report.html"
    (run / "report.html").write_text((run / "report_runs.html").read_text())  # a page tirl report wrote
    assert page_name(run, replace=False) == "report.html"  # its own page is simply rewritten
