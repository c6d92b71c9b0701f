"""tirl: tool-integrated reinforcement learning (ReTool / ToRL) that reads in an afternoon.

From Python, `tirl.sft`, `tirl.train` and `tirl.evaluate` do what `tirl sft`, `tirl train` and `tirl eval`
do (`tirl.api`); they are imported on first use, so `import tirl` loads no torch.
"""

__version__ = "0.1.0"
__all__ = ["__version__", "evaluate", "sft", "train"]

TYPE_CHECKING = False  # not `typing`'s: importing typing is most of what `import tirl` would cost
if TYPE_CHECKING:  # for editors and type checkers; at run time `__getattr__` imports them when asked
    from tirl.api import evaluate, sft, train


def __getattr__(name: str) -> object:
    if name == "train":  # the trainer package, made callable: Python binds `tirl.train` to it on any import
        import tirl.train

        return tirl.train
    if name in ("sft", "evaluate"):
        from tirl import api

        return getattr(api, name)
    raise AttributeError(f"module 'tirl' has no attribute {name!r}")
