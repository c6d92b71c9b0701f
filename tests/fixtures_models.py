"""Shared fixtures: the tiny Qwen2 model, built once per test session through `build_tiny_model`.

Import the fixtures into a test module (`from fixtures_models import tiny_model_dir, tiny_model,
tiny_tokenizer`) or into conftest.py. The model is random (init std 0.3, so greedy output varies from
token to token and padding/cache bugs change tokens); its tokenizer is trained on a few arithmetic
traces in both tag styles.
"""

from __future__ import annotations

import pytest
import torch

from tirl.formats import RETOOL, TORL


def tiny_corpus() -> list[str]:
    """Short traces in both tag styles, so that tags, digits and common words are in the vocabulary."""
    texts = []
    for a, b in [(12, 34), (567, 89), (1024, 7), (31, 415), (99, 99)]:
        for style in (RETOOL, TORL):
            code = f"x = {a} * {b}\nprint(x)"
            texts.append(
                f"What is {a} times {b}? Let me compute it.\n{style.wrap_code(code)}"
                f"{style.wrap_output(str(a * b))}The product is {a * b}.\n{style.wrap_answer(str(a * b))}"
            )
    texts.append("Error: Traceback (most recent call last): ZeroDivisionError: division by zero")
    return texts * 4


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    from tirl.models import build_tiny_model

    torch.set_num_threads(1)
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"), tiny_corpus(), init_std=0.3)


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir):
    from tirl.models import load_tokenizer

    return load_tokenizer(tiny_model_dir)


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir):
    from tirl.models import load_model

    return load_model(tiny_model_dir, device="cpu")
