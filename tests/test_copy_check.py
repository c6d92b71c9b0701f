"""The demo's check that a cold-started model copies the interpreter's output into its answer."""

from fixtures_models import tiny_model_dir, tiny_tokenizer  # noqa: F401

from tirl.formats import RETOOL
from tirl.generation.base import GenerationOutput
from tirl.tasks import generate_task
from tirl.tasks.copy_check import copy_contexts, copy_rate


class Answers:
    """Writes a fixed answer text per request (in order), as a model would after `\\boxed{`."""

    def __init__(self, tokenizer, texts):
        self.tokenizer, self.texts, self.contexts = tokenizer, texts, []

    def generate(self, requests, params):
        assert params.temperature == 0.0 and "}" in params.stop
        self.contexts += [r.token_ids for r in requests]
        return [GenerationOutput(self.tokenizer.encode(t, add_special_tokens=False), [0.0], "stop") for t in self.texts]


def test_the_context_ends_with_the_real_output_then_the_answers_box(tiny_tokenizer):
    item = generate_task("arithmetic", 1, split="test", seed=0, level=2, kinds=["mul"])[0]
    text = tiny_tokenizer.decode(copy_contexts([item], tiny_tokenizer, RETOOL)[0])
    assert item.code in text
    assert text.endswith(f"<interpreter>\n{item.answer}\n</interpreter>\n\n<answer>\n\\boxed{{")


def test_only_exact_copies_count(tiny_tokenizer):
    items = generate_task("arithmetic", 4, split="test", seed=0, level=2, kinds=["mul"])
    miscopied = items[1].answer[:-1] + str((int(items[1].answer[-1]) + 1) % 10)
    texts = [items[0].answer + "}", miscopied + "}", items[2].answer[:-1] + "}", items[3].answer + "}\n</answer>"]
    gen = Answers(tiny_tokenizer, texts)
    assert copy_rate(gen, tiny_tokenizer, items, RETOOL) == 0.5
    assert len(gen.contexts) == 4
