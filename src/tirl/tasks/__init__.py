"""Built-in tasks: seeded problem generators with reference answers, and their SFT traces."""

from tirl.tasks.arithmetic import KINDS, TaskItem, generate
from tirl.tasks.sft_traces import make_traces

__all__ = ["KINDS", "TaskItem", "generate", "make_traces"]
