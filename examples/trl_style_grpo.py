"""GRPO with the code interpreter, written as a TRL user writes `GRPOTrainer(reward_funcs=..., train_dataset=...)`.

    python examples/trl_style_grpo.py [RUN_DIR]     (default runs/trl_style_grpo; the model goes to RUN_DIR-model)

A tiny Qwen2 model built from a config and saved with `save_pretrained` (a real run names a Hub model or a
local directory instead), a `datasets.Dataset` of problems with an extra column, two reward functions with
weights (TRL's batched signature, reading that column; tirl's per-sample one, reading the trajectory's tool
calls), the built-in +1/-1 grade among them, and two steps. Runs on a CPU in a minute or two. The run
directory is the one `tirl train` writes; metrics.jsonl logs reward/correct, reward/difficulty_bonus and
reward/used_the_tool beside reward/mean, their weighted sum.
"""

import sys
from pathlib import Path

from datasets import Dataset
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

import tirl


def tiny_model(out: Path, texts: list[str]) -> str:
    """A 2-layer Qwen2 and a byte-level BPE tokenizer trained on `texts`, saved as any model is."""
    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    config = Qwen2Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, tie_word_embeddings=True)
    Qwen2ForCausalLM(config).save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


def difficulty_bonus(prompts, completions, difficulty, **kwargs):
    """TRL's batched signature: every completion at once, the dataset's columns by name."""
    return [0.1 * d if "\\boxed{" in c else 0.0 for c, d in zip(completions, difficulty)]


def used_the_tool(problem, response, trajectory, reference):
    """tirl's per-sample signature: the trajectory holds each code call and its status."""
    return 1.0 if any(call.status == "ok" for call in trajectory.tool_calls) else 0.0


def main(run_dir: str = "runs/trl_style_grpo") -> dict:
    pairs = [(a, b) for a in range(11, 60, 7) for b in range(13, 40, 9)]
    dataset = Dataset.from_list([{"problem": f"What is {a} * {b}?", "answer": str(a * b),
                                  "difficulty": len(str(a * b))} for a, b in pairs])
    texts = [f"{row['problem']} <code>print({row['answer']})</code> \\boxed{{{row['answer']}}}" for row in dataset]
    model = tiny_model(Path(f"{run_dir}-model"), texts)
    return tirl.train(
        model={"path": model}, run_dir=run_dir, train_dataset=dataset, eval_dataset=dataset.select(range(4)),
        reward_funcs=["correct", difficulty_bonus, used_the_tool], reward_weights=[1.0, 0.5, 0.2],
        prompt={"system_prompt": ""},  # a tiny model does not read instructions
        trainer={"steps": 2, "prompts_per_step": 2, "eval_size": 4, "save_every": 0},
        rollout={"n": 4, "max_new_tokens": 48, "temperature": 1.0})


if __name__ == "__main__":
    summary = main(*sys.argv[1:2])
    print(f"run directory: {summary['run_dir']}; held-out reward {summary['eval_end']['eval/reward_mean']:+.3f}")
