"""Generation backends behind one `Generator` protocol (see `base.py`).

`HFGenerator` (transformers, KV cache reuse) lives in `hf.py` and is imported lazily so that code
needing only the protocol does not import torch; `ScriptedGenerator` (fixed token streams) is for tests
and demos of the rollout loop.
"""

from tirl.generation.base import (
    FINISH_EOS,
    FINISH_LENGTH,
    FINISH_STOP,
    GenerationOutput,
    GenerationRequest,
    Generator,
    SamplingParams,
)

__all__ = [
    "FINISH_EOS", "FINISH_LENGTH", "FINISH_STOP", "GenerationOutput", "GenerationRequest", "Generator",
    "SamplingParams", "HFGenerator", "ScriptedGenerator",
]


def __getattr__(name: str):
    if name == "HFGenerator":
        from tirl.generation.hf import HFGenerator

        return HFGenerator
    if name == "ScriptedGenerator":
        from tirl.generation.scripted import ScriptedGenerator

        return ScriptedGenerator
    raise AttributeError(name)
