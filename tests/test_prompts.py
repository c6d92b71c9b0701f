"""One prompt rule: RL rollouts, evaluation and SFT traces see byte-identical prompts."""

import pytest

from tirl.data import build_prompt
from tirl.formats import RETOOL, TORL
from tirl.models import train_tokenizer
from tirl.rollout import encode_prompt, prompt_text


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(["What is 12 * 34?", RETOOL.system_prompt, TORL.prompt_template], vocab_size=300)


@pytest.mark.parametrize("style", [RETOOL, TORL], ids=["retool", "torl"])
@pytest.mark.parametrize("chat", [True, False])
def test_rollout_and_sft_prompts_agree(tok, style, chat):
    problem = "What is 12 * 34?"
    text = prompt_text(tok, problem, style, chat)
    assert build_prompt(problem, style, tok, use_chat_template=chat) == text
    assert encode_prompt(tok, problem, style, chat) == tok.encode(text, add_special_tokens=False)
    assert problem in text
    if style.system_prompt:
        assert style.system_prompt in text  # plain mode keeps the instructions too


def test_chat_without_template_is_refused():
    class NoTemplate:
        chat_template = None

    with pytest.raises(ValueError, match="no chat template"):
        prompt_text(NoTemplate(), "x", RETOOL, chat=True)
