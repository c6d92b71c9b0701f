"""Data loading: problems for RL/eval, SFT traces, and tokenising traces with the loss mask.

* `load_problems` / `Problem` / `build_prompt` — `problems.py`
* `load_traces` / `Trace` / `Segment` — `traces.py`
* `tokenize_trace` / `tokenize_traces` — `sft_tokenize.py`
* `DataError` (file:line or file[row] and the reason), `Loaded` (a list with `.skipped`) — `rows.py`
"""

from tirl.data.problems import Problem, build_prompt, load_problems
from tirl.data.rows import DataError, Loaded
from tirl.data.sft_tokenize import IGNORE_INDEX, tokenize_trace, tokenize_traces
from tirl.data.traces import Segment, Trace, load_traces, trace_from_row

__all__ = [
    "DataError", "IGNORE_INDEX", "Loaded", "Problem", "Segment", "Trace",
    "build_prompt", "load_problems", "load_traces", "tokenize_trace", "tokenize_traces",
    "trace_from_row",
]
