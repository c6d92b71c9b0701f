"""The HTML report over run directories (`tirl report`, and the demo's last stage).

* `runs` — reading a run directory (metrics, samples, summary) and what is derived from it;
* `plots` — the PNG plots (matplotlib, Agg canvas);
* `prompts` — a sample's prompt text, decoded with the run's own tokenizer;
* `page` — `write_report(run_dirs, out_dir, ...)`: the self-contained HTML page;
* `command` — the `tirl report` command.

Nothing is imported here, so `tirl report --help` does not load matplotlib.
"""
