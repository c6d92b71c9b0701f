"""The HTML report of one or more run directories: what training changed, in plots, figures and samples.

`write_report(run_dirs, out_dir, title=..., labels=None, extra=None, name="report.html") -> Path` writes
`out_dir/name` (self-contained: CSS inline, PNGs embedded as base64) and the same PNGs under
`out_dir/plots/`, over the run directories `tirl.report.runs` reads (a demo's directory expands into
its sub-runs).

The page: headline figures (`extra`), curves over steps with the runs overlaid, in a grid of two or
three a row that fits a 1280 px window (train and held-out accuracy, the mean reward and each
`reward/<name>` component, SFT train and held-out loss, policy and value loss, KL, entropy, clip fraction, gradient norm,
response length, share of responses with code, code pass rate, calls per response, first call position,
self-correction, learning rate, throughput; `tirl.report.labels.PANELS`), the time split of a step
(generation / sandbox / update / other, mean seconds, one bar per run), code purposes early vs late in training (first vs last third of the
steps, from `purpose/*` metrics weighted by executed calls, or classified from `samples.jsonl` when the
metrics lack them), the `summary.json` figures side by side, and up to six sample trajectories per run
(first, middle and last step, a correct and a wrong one where there are both), each under its prompt
(`tirl.report.prompts`), with model text, code and interpreter output in distinct CSS classes; `tirl eval` directories as a table of scores per benchmark. Metric keys are shown by
their readable names (`tirl.report.labels`). A panel with no finite value in any run is not drawn; one
line names the panels left out.

Simplifications: the samples are the few the trainer kept, not a random draw; a step's metrics are the
trainer's batch means (not re-computed). Not covered: interactive plots, comparing runs with different
step scales (each run is drawn over its own step numbers).
"""

from __future__ import annotations

import base64
import datetime
import html
import math
import re
from pathlib import Path
from typing import Any, Sequence

from tirl.analysis.code_purpose import PURPOSES
from tirl.jsonl import dumps
from tirl.report.labels import EVAL_COLUMNS, PANELS, TIME_PARTS, readable, reward_panel
from tirl.report.plots import COLORS, Curve, line_plot, purpose_plot, time_split_plot
from tirl.report.prompts import prompt_text
from tirl.report.runs import Run, default_labels, expand_run_dirs, finite, load_run, pick_samples, purpose_split

# ---- sample trajectories -----------------------------------------------------------------------

def segments(text: str, calls: list[dict[str, Any]]) -> tuple[list[tuple[str, str]], list[dict[str, Any]]]:
    """Split a response into ("text" | "code" | "output" | "error", piece) in order, finding each call's
    code and then its output verbatim after the previous one. Returns (segments, calls not found)."""
    out: list[tuple[str, str]] = []
    pos, missing = 0, []
    for c in calls:
        located = True
        for kind, piece in (("code", c.get("code") or ""), ("output", c.get("output") or "")):
            if not piece.strip():
                continue
            hit = next(((i, cand) for cand in dict.fromkeys([piece, piece.strip()])
                        if (i := text.find(cand, pos)) >= 0), None)
            if hit is None:
                located = False
                continue
            if kind == "output" and c.get("status") != "ok":
                kind = "error"
            out += [("text", text[pos:hit[0]]), (kind, hit[1])]
            pos = hit[0] + len(hit[1])
        if not located:
            missing.append(c)
    out.append(("text", text[pos:]))
    return [(k, p) for k, p in out if p], missing


def render_sample(s: dict[str, Any], prompt: str | None = None) -> str:
    """One sample: its head (step, grade, answer), its prompt when known, then the response with code and
    interpreter output marked."""
    g = s.get("grade") or {}
    ok = bool(g.get("correct"))
    head = (f"step {s.get('step')} · <b class=\"{'right' if ok else 'wrong'}\">{'correct' if ok else 'wrong'}"
            f"</b> · reward {_fmt(g.get('score'))} · answer {_esc(g.get('extracted'))} "
            f"(reference {_esc(g.get('reference'))}) · finish {_esc(s.get('finish_reason'))} · "
            f"{len(s.get('tool_calls') or [])} call(s)")
    segs, missing = segments(s.get("text") or "", list(s.get("tool_calls") or []))
    body = "".join(f'<span class="seg-{k}">{html.escape(p)}</span>' for k, p in segs)
    extra = ""
    if missing:
        extra = "<p class=\"note\">calls not found verbatim in the decoded text:</p>" + "".join(
            f'<pre class="traj"><span class="seg-code">{html.escape(c.get("code") or "")}</span>\n'
            f'<span class="seg-{"output" if c.get("status") == "ok" else "error"}">'
            f'{html.escape(c.get("output") or "")}</span></pre>' for c in missing)
    n_prompt = len(s.get("prompt_ids") or [])
    shown = (f'<pre class="prompt">{html.escape(prompt)}</pre>' if prompt is not None else
             f'<p class="note">prompt: {n_prompt} tokens (no tokenizer in the run directory to show it)</p>'
             if n_prompt else "")
    return (f'<div class="sample"><div class="sample-head">{head}</div>{shown}<pre class="traj">{body}</pre>'
            f"{extra}</div>")


# ---- page ----------------------------------------------------------------------------------------

def _esc(v: Any) -> str:
    return html.escape("—" if v is None else str(v))


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "—" if not math.isfinite(v) else f"{v:.4g}"
    if v is None:
        return "—"
    if isinstance(v, (dict, list)):
        return html.escape(dumps(v))
    return html.escape(str(v))


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _img(path: Path, caption: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
            f'<figcaption>{html.escape(caption)} · <code>plots/{html.escape(path.name)}</code></figcaption></figure>')


def _plots(runs: list[Run], plot_dir: Path) -> tuple[list[str], list[str]]:
    """(the figures of the panels that have data, the names of those that have none in any run)."""
    parts, empty = [], []
    curves = []
    for i, r in enumerate(runs):
        color = COLORS[i % len(COLORS)]
        curves.append(Curve(f"{r.label} · {readable('reward/accuracy')}", color, *r.series("reward/accuracy")))
        steps, acc = r.series("eval/accuracy")
        start = (r.summary.get("eval_start") or {}).get("eval/accuracy")
        if finite(start) and 0 not in steps:  # the trainer evaluates before step 1 into summary.json
            steps, acc = [0.0, *steps], [float(start), *acc]
        curves.append(Curve(f"{r.label} · {readable('eval/accuracy')}", color, steps, acc, points=True))
    path = plot_dir / "accuracy.png"
    if line_plot(curves, path, title="Accuracy", ylabel="share correct", ylim=(0.0, 1.0),
                 xlim=(min((c.x[0] for c in curves if c.x), default=0), max((c.x[-1] for c in curves if c.x), default=0))):
        parts.append(_img(path, "Accuracy: sampled training rollouts (line) and held-out evaluations (points)"))
    else:
        empty.append("accuracy")
    logged = {k for r in runs for m in r.metrics for k in m}
    panels = [p for p in (reward_panel(logged),) if p is not None] + PANELS
    for stem, title, ylabel, ylim, keys in panels:
        present = [(k, pts) for k, pts in keys if any(r.series(k)[0] for r in runs)]
        having = [r for r in runs if any(r.series(k)[0] for k, _ in present)]
        curves = []
        for i, r in enumerate(having):
            for j, (key, pts) in enumerate(present):
                # One run: a colour per key. Several: a colour per run, a line style per key.
                color = COLORS[(j if len(having) == 1 else runs.index(r)) % len(COLORS)]
                dash = "-" if len(having) == 1 else ("-", "--", ":")[j % 3]
                name = r.label if len(present) == 1 else (
                    readable(key) if len(having) == 1 else f"{r.label} · {readable(key)}")
                curves.append(Curve(name, color, *r.series(key), points=pts, dash=dash))
        path = plot_dir / f"{stem}.png"
        steps = [m["step"] for r in having for m in r.metrics]
        if line_plot(curves, path, title=title, ylabel=ylabel, ylim=ylim,
                     xlim=(min(steps), max(steps)) if steps else None):
            parts.append(_img(path, title))
        else:
            empty.append(title.lower())
    split = _time_split(runs, plot_dir)
    parts += split or []
    if split is None:
        empty.append("time split")
    return parts, empty


def _time_split(runs: list[Run], plot_dir: Path) -> list[str] | None:
    """Mean seconds per step in generation, sandbox, update and the rest, one bar per run; None if no run
    logs the split (SFT runs do not)."""
    rows = []
    for r in runs:
        having = [m for m in r.metrics if all(finite(m.get(k, math.nan)) for k, _ in TIME_PARTS)]
        if not having:
            continue
        split = {name: sum(m[k] for m in having) / len(having) for k, name in TIME_PARTS}
        steps = [m["time/step_s"] for m in having if finite(m.get("time/step_s", math.nan))]
        if len(steps) == len(having):
            split["other"] = max(0.0, sum(steps) / len(steps) - sum(split.values()))
        rows.append((r.label, split))
    path = plot_dir / "time_split.png"
    parts = [name for _, name in TIME_PARTS] + ["other"]
    if not time_split_plot(rows, parts, path, title="Time per step: generation / sandbox / update"):
        return None
    return [_img(path, "Time split of a training step (mean over steps)")]


def _evaluations(runs: list[Run]) -> list[str]:
    """`tirl eval` directories: one table row per (run, benchmark), scores then tool use."""
    rows, score_keys = [], []
    for r in runs:
        benches = dict((r.summary.get("benchmarks") or {}))
        if len(benches) > 1 and r.summary.get("overall"):
            benches["overall"] = r.summary["overall"]
        for name, scores in benches.items():
            rows.append((r.label, name, scores))
            score_keys += [k for k in scores if k.split("@")[0] in ("avg", "pass", "maj")]
    score_keys = list(dict.fromkeys(score_keys))
    if not rows:
        return ['<p class="skip">No finished evaluation (summary.json) in the eval run(s).</p>']
    cols = ["problems", *score_keys, *EVAL_COLUMNS]
    head = "".join(f"<th>{html.escape(readable(c))}</th>" for c in cols)
    body = "".join(f"<tr><td>{html.escape(label)}</td><td>{html.escape(name)}</td>"
                   + "".join(f"<td>{_fmt(scores.get(c))}</td>" for c in cols) + "</tr>"
                   for label, name, scores in rows)
    return ['<p class="note">avg@n: mean correctness over all samples; pass@k: some of k samples correct '
            "(unbiased estimate); maj@k: the majority answer of k samples is correct.</p>",
            f'<div class="wide"><table><tr><th>run</th><th>benchmark</th>{head}</tr>{body}</table></div>']


def _purposes(runs: list[Run], plot_dir: Path) -> list[str]:
    splits = [(r.label, COLORS[i % len(COLORS)], purpose_split(r)) for i, r in enumerate(runs)]
    have = [(label, color, s) for label, color, s in splits if s is not None]
    parts = ["<h2>What the code is for</h2>",
             '<p class="note">Each executed snippet is classified by static analysis of its code '
             "(<code>tirl.analysis.code_purpose</code>); shares of executed calls in the first vs the last third "
             "of the training steps.</p>"]
    for label, _, s in splits:
        if s is None:
            parts.append(f'<p class="skip">{html.escape(label)}: no executed code to classify.</p>')
    path = plot_dir / "purposes.png"
    if have and purpose_plot([(label, color, e, l) for label, color, (e, l, _) in have], PURPOSES, path,
                             title="Code purposes, early vs late in training"):
        parts.append(_img(path, "Code purposes: early (light) vs late (dark)"))
        seen = [p for p in PURPOSES if any(x.get(p, 0) > 0 for _, _, (e, l, _) in have for x in (e, l))]
        rows = "".join(
            f"<tr><td>{html.escape(label)}</td><td>{html.escape(src)}</td>"
            + "".join(f"<td>{_fmt(e.get(p))} → {_fmt(l.get(p))}</td>" for p in seen) + "</tr>"
            for label, _, (e, l, src) in have)
        parts.append('<div class="wide"><table><tr><th>run</th><th>source</th>'
                     + "".join(f"<th>{p} (early → late)</th>" for p in seen) + f"</tr>{rows}</table></div>")
    return parts


def _summary_table(runs: list[Run]) -> str:
    flat = [_flatten(r.summary) for r in runs]
    keys = list(dict.fromkeys(k for f in flat for k in f))
    if not keys:
        return '<p class="skip">No summary.json figures in any run.</p>'
    head = "".join(f"<th>{html.escape(r.label)}</th>" for r in runs)
    rows = "".join(f'<tr><td>{html.escape(readable(k))} <code class="key">{html.escape(k)}</code></td>' + "".join(f"<td>{_fmt(f.get(k))}</td>" for f in flat)
                   + "</tr>" for k in keys)
    return f'<div class="wide"><table><tr><th>figure</th>{head}</tr>{rows}</table></div>'


# A grid of two or three plots a row (three from about 1,200 px); nothing is wider than the page, so a
# 1280 px window never scrolls sideways: wide tables scroll inside their own box.
CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1240px;margin:2em auto;padding:0 1em;
color:#222;overflow-wrap:anywhere}
h1{margin-bottom:.2em} .meta{color:#666;font-size:.9em}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(370px,1fr));gap:.8em 1.2em;align-items:start}
.grid figure{margin:0;min-width:0}
.wide{max-width:100%;overflow-x:auto}
pre.prompt{white-space:pre-wrap;word-break:break-word;margin:0;padding:.5em .8em;font-size:.8em;color:#555;
background:#fbfaf5;border-bottom:1px dashed #ddd;max-height:14em;overflow-y:auto}
.prompt-key{color:#555;background:#fbfaf5;border:1px dashed #ccc;padding:0 .3em}
.cards{display:flex;flex-wrap:wrap;gap:.8em;margin:1em 0}
.card{border:1px solid #ddd;border-radius:6px;padding:.6em 1em;min-width:9em;background:#fafafa}
.card .k{font-size:.8em;color:#666} .card .v{font-size:1.4em;font-weight:600}
figure{margin:1em 0} figure img{max-width:100%;border:1px solid #eee}
figcaption{font-size:.85em;color:#555}
table{border-collapse:collapse;font-size:.85em;margin:.8em 0} td,th{border:1px solid #ddd;padding:.25em .6em;
text-align:left} th{background:#f3f3f3}
.skip{color:#a15c00;background:#fff6e5;padding:.3em .6em;border-radius:4px}
.note{color:#555;font-size:.9em} code.key{color:#888;font-size:.8em}
.sample{border:1px solid #ddd;border-radius:6px;margin:1em 0}
.sample-head{background:#f3f3f3;padding:.4em .8em;font-size:.85em}
.right{color:#1a7f37} .wrong{color:#c62828}
pre.traj{white-space:pre-wrap;word-break:break-word;margin:0;padding:.6em .8em;font-size:.85em;line-height:1.4}
.seg-text{color:#222}
.seg-code{background:#e8f0fe;color:#0b3d91;border-left:3px solid #4a78d0;display:inline-block;padding:0 .3em}
.seg-output{background:#e9f7ec;color:#1b5e20;border-left:3px solid #3c9a50;display:inline-block;padding:0 .3em}
.seg-error{background:#fdecea;color:#8e1c1c;border-left:3px solid #d04a4a;display:inline-block;padding:0 .3em}
"""


def write_report(run_dirs: Sequence[str | Path], out_dir: str | Path, title: str = "tirl report",
                 labels: Sequence[str] | None = None, extra: dict[str, Any] | None = None,
                 samples: Sequence[dict[str, Any]] = (), samples_title: str = "More samples",
                 name: str = "report.html", generator: str = "tirl report") -> Path:
    """Write out_dir/`name` and out_dir/plots/*.png over the runs; returns the HTML path. `generator`
    (the page's `<meta name="generator">`) tells which command wrote a page (`page_generator`).

    Raises FileNotFoundError when a path holds no run, ValueError when `labels` does not match the
    number of runs after expansion. `samples` (rows in `samples.jsonl`'s shape, e.g. held-out
    trajectories a caller picked) are shown after the runs' own, under `samples_title`.
    """
    dirs = expand_run_dirs(run_dirs)
    if labels is not None and len(labels) != len(dirs):
        raise ValueError(f"{len(labels)} label(s) for {len(dirs)} run(s): "
                         f"{', '.join(str(d) for d in dirs)}")
    runs = [load_run(d, lab) for d, lab in zip(dirs, labels or default_labels(dirs))]
    out_dir = Path(out_dir)
    plot_dir = out_dir / "plots"
    plot_dir.mkdir(parents=True, exist_ok=True)

    body = [f"<h1>{html.escape(title)}</h1>",
            f'<p class="meta">written {datetime.datetime.now():%Y-%m-%d %H:%M} from '
            + ", ".join(f"<b>{html.escape(r.label)}</b> (<code>{html.escape(str(r.path))}</code>, "
                        + (f"{len(r.metrics)} steps)" if r.kind == "train" else "evaluation)") for r in runs) + "</p>"]
    if extra:
        body.append('<div class="cards">' + "".join(
            f'<div class="card"><div class="k">{html.escape(str(k))}</div><div class="v">{_fmt(v)}</div></div>'
            for k, v in extra.items()) + "</div>")
    for r in runs:
        for p in r.problems:
            body.append(f'<p class="skip">{html.escape(r.label)}: {html.escape(p)}</p>')
    evals, runs = [r for r in runs if r.kind == "eval"], [r for r in runs if r.kind != "eval"]
    if runs:
        figures, empty = _plots(runs, plot_dir)
        body += ["<h2>Training curves</h2>", '<div class="grid">', *figures, "</div>"]
        if empty:
            body.append(f'<p class="note">Not drawn (no data in any run): {html.escape(", ".join(empty))}.</p>')
        body += _purposes(runs, plot_dir)
        body += ["<h2>Run summaries</h2>", _summary_table(runs)]
    if evals:
        body += ["<h2>Evaluations (tirl eval)</h2>", *_evaluations(evals)]
    body.append("<h2>Sample trajectories</h2>"
                '<p class="note"><span class="prompt-key">prompt</span> <span class="seg-code">code</span> '
                '<span class="seg-output">interpreter output</span> '
                '<span class="seg-error">interpreter error</span></p>')
    for r in runs:
        picked = pick_samples(r)
        body.append(f"<h3>{html.escape(r.label)}</h3>")
        body += [render_sample(s, prompt_text(r.path, s)) for s in picked] or [
            '<p class="skip">no samples.jsonl entries.</p>']
    if samples:
        body.append(f"<h3>{html.escape(samples_title)}</h3>")
        body += [render_sample(s, s.get("prompt") if isinstance(s.get("prompt"), str) else None) for s in samples]

    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<meta name="generator" content="{html.escape(generator)}">'
            f"<style>{CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
    out = out_dir / name
    out.write_text(page, encoding="utf-8")
    return out


def page_generator(path: Path) -> str | None:
    """The command that wrote the HTML page at `path` (its `<meta name="generator">`), or None for a page
    without one (written before pages said so, or not by tirl)."""
    head = path.read_text(encoding="utf-8", errors="replace")[:4000]
    m = re.search(r'<meta name="generator" content="([^"]*)">', head)
    return html.unescape(m.group(1)) if m else None
