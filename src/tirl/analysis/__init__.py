"""Pure analysis of finished work: no torch, no I/O, records in and numbers out.

* `tool_stats` — tool-use statistics of a batch of trajectories (ReTool's analysis quantities);
* `code_purpose` — what a code snippet is for, by static analysis;
* `scores` — benchmark scores over k samples per problem (avg@k, pass@k, maj@k).

Used by the rollout (per-batch metrics), evaluation and the report; it imports only `tirl.formats`-level
code, so any layer may use it.
"""
