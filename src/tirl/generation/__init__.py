"""Generation backends behind one `Generator` protocol (see `base.py`).

`HFGenerator` (transformers, KV cache reuse) lives in `hf.py` and is imported lazily so that code
needing only the protocol does not import torch; `OpenAIGenerator` (`openai.py`) talks to a server.
The tests' generators (fixed token streams) live in `tests/`.
"""

from tirl.generation.base import (
    FINISH_EOS,
    FINISH_ERROR,
    FINISH_LENGTH,
    FINISH_STOP,
    GenerationOutput,
    GenerationRequest,
    Generator,
    SamplingParams,
)

__all__ = [
    "FINISH_EOS", "FINISH_ERROR", "FINISH_LENGTH", "FINISH_STOP", "GenerationOutput", "GenerationRequest", "Generator",
    "SamplingParams", "HFGenerator",
]


def __getattr__(name: str):
    if name == "HFGenerator":
        from tirl.generation.hf import HFGenerator

        return HFGenerator
    raise AttributeError(name)
