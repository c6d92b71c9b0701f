"""The transformers backend on the tiny random Qwen2 model: padding, cache reuse, sampling, log-probs.

Tolerances: float32 on CPU; batched vs single and cached vs re-prefilled computations differ only in
reduction order, measured around 1e-6 here, so logits and log-probs must agree within 1e-4 absolute.
"""

from __future__ import annotations

import pytest
import torch
from fixtures_models import tiny_model, tiny_model_dir, tiny_tokenizer  # noqa: F401 (fixtures)
from forced_generator import ForcedHFGenerator
from helpers_rollout import SubprocessRunner

from tirl.formats import RETOOL
from tirl.generation import GenerationRequest, Generator, SamplingParams
from tirl.generation.hf import HFGenerator, sample_next
from tirl.rollout import rollout

torch.set_num_threads(1)
TOL = 1e-4
GREEDY = SamplingParams(max_new_tokens=12, temperature=0)


def enc(tok, s):
    return tok.encode(s, add_special_tokens=False)


def prompts(tok):
    return [enc(tok, "What is 12 times 34?"), enc(tok, "Hi"), enc(tok, "The product is 1024. Let me compute it again")]


def full_logprobs(model, ids, temperature=1.0):
    """Log-probs of ids[1:] from one unpadded forward pass over ids, `(len(ids) - 1,)`."""
    with torch.inference_mode():
        logits = model(torch.tensor([ids])).logits[0, :-1].float()
    if temperature > 0:
        logits = logits / temperature
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(ids[1:])[:, None])[:, 0]


def test_is_a_generator(tiny_model, tiny_tokenizer):
    assert isinstance(HFGenerator(tiny_model, tiny_tokenizer), Generator)


def test_padded_batch_equals_alone(tiny_model, tiny_tokenizer):
    g = HFGenerator(tiny_model, tiny_tokenizer)
    ps = prompts(tiny_tokenizer)
    alone = [g.generate([GenerationRequest(p)], GREEDY)[0] for p in ps]
    batch = g.generate([GenerationRequest(p) for p in ps], GREEDY)
    for a, b in zip(alone, batch):
        assert a.token_ids == b.token_ids and len(set(a.token_ids)) > 3  # varied output: a real check
        assert max(abs(x - y) for x, y in zip(a.logprobs, b.logprobs)) < TOL


def test_cached_equals_reprefill_over_tool_turns(tiny_model, tiny_tokenizer):
    """Two turns with injected tokens of different lengths: the cached path (holes between each row's
    cache and suffix) gives the logits and greedy tokens of re-running every sequence from scratch."""
    tok = tiny_tokenizer
    cached, ref = HFGenerator(tiny_model, tok), HFGenerator(tiny_model, tok, reuse_cache=False)
    ps = prompts(tok)
    injected = [enc(tok, "\n<interpreter>\n408\n</interpreter>\n\n"), enc(tok, "\n1\n"),
                enc(tok, "\n<interpreter>\nError: ZeroDivisionError: division by zero\n</interpreter>\n")]
    params = SamplingParams(max_new_tokens=6, temperature=0, return_logits=True)
    seqs = [list(p) for p in ps]
    for turn in range(3):
        reqs = [GenerationRequest(s, key=i) for i, s in enumerate(seqs)]
        a, b = cached.generate(reqs, params), ref.generate(reqs, params)
        for i, (x, y) in enumerate(zip(a, b)):
            assert x.token_ids == y.token_ids
            assert (x.logits - y.logits).abs().max().item() < TOL
            assert y.prefill_tokens == len(seqs[i])  # the reference re-runs everything
            expected = len(seqs[i]) if turn == 0 else 1 + len(injected[i])  # last sampled + injected
            assert x.prefill_tokens == expected
            seqs[i] = seqs[i] + x.token_ids + injected[i]
    assert sorted(cached.cached_keys()) == [0, 1, 2] and ref.cached_keys() == []
    cached.release([0, 1, 2])
    assert cached.cached_keys() == []


def test_cache_survives_a_changed_prefix(tiny_model, tiny_tokenizer):
    """A request whose ids diverge from the cached ones only reuses the common prefix."""
    tok = tiny_tokenizer
    g, ref = HFGenerator(tiny_model, tok), HFGenerator(tiny_model, tok, reuse_cache=False)
    p = prompts(tok)[0]
    first = g.generate([GenerationRequest(p, key="k")], GREEDY)[0]
    edited = p[:-2] + enc(tok, " 99?")
    a = g.generate([GenerationRequest(edited, key="k")], GREEDY)[0]
    b = ref.generate([GenerationRequest(edited)], GREEDY)[0]
    assert a.token_ids == b.token_ids and a.prefill_tokens == len(edited) - (len(p) - 2)
    assert first.token_ids  # (the first call filled the cache)


def test_seeded_sampling_is_reproducible(tiny_model, tiny_tokenizer):
    g = HFGenerator(tiny_model, tiny_tokenizer)
    reqs = [GenerationRequest(p) for p in prompts(tiny_tokenizer)]
    run = lambda seed: [o.token_ids for o in g.generate(reqs, SamplingParams(max_new_tokens=16, seed=seed))]
    assert run(7) == run(7)
    assert run(7) != run(8)


def test_logprobs_equal_a_full_forward_pass(tiny_model, tiny_tokenizer):
    g = HFGenerator(tiny_model, tiny_tokenizer)
    ps = prompts(tiny_tokenizer)
    outs = g.generate([GenerationRequest(p) for p in ps], SamplingParams(max_new_tokens=10, temperature=0.7,
                                                                         top_p=0.9, seed=1))
    for p, o in zip(ps, outs):
        ref = full_logprobs(tiny_model, p + o.token_ids, 0.7)[len(p) - 1:]
        assert torch.allclose(torch.tensor(o.logprobs), ref, atol=TOL)


def test_top_k_one_and_tiny_top_p_are_greedy(tiny_model, tiny_tokenizer):
    g = HFGenerator(tiny_model, tiny_tokenizer)
    reqs = [GenerationRequest(p) for p in prompts(tiny_tokenizer)]
    greedy = [o.token_ids for o in g.generate(reqs, GREEDY)]
    for kw in ({"top_k": 1}, {"top_p": 1e-6}):
        got = [o.token_ids for o in g.generate(reqs, SamplingParams(max_new_tokens=12, seed=3, **kw))]
        assert got == greedy


def test_sample_next_respects_top_k():
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0, 4.0]]).repeat(2000, 1)
    tok, lp = sample_next(logits, SamplingParams(top_k=2), torch.Generator().manual_seed(0))
    assert set(tok.tolist()) == {3, 4}
    assert torch.allclose(lp, torch.log_softmax(logits, -1).gather(-1, tok[:, None])[:, 0])


def test_sampling_draws_tokens_in_proportion_to_their_probability_and_never_a_truncated_one():
    from tirl.generation.hf import _draw

    probs = torch.tensor([0.5, 0.0, 0.3, 0.15, 0.05, 0.0])
    tok = _draw(probs.repeat(200_000, 1), torch.Generator().manual_seed(0))
    freq = torch.bincount(tok, minlength=6).float() / tok.numel()
    assert freq[1] == 0 and freq[5] == 0
    torch.testing.assert_close(freq, probs, atol=4e-3, rtol=0)  # ~4 standard errors at 200k draws
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]]).repeat(20_000, 1)
    tok, _ = sample_next(logits, SamplingParams(top_p=0.8), torch.Generator().manual_seed(1))
    p = torch.softmax(logits[0], -1)  # top-p 0.8 keeps tokens 0 and 1 (0.64 + 0.24 of the mass)
    assert set(tok.tolist()) == {0, 1}
    assert abs(float((tok == 0).float().mean()) - float(p[0] / p[:2].sum())) < 0.015


def test_a_draw_rounding_past_the_total_takes_the_last_token_with_mass(monkeypatch):
    from tirl.generation.hf import _draw

    monkeypatch.setattr(torch, "rand", lambda *a, **k: torch.ones(2, 1))  # u == the total: past every cdf
    probs = torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.2, 0.3, 0.1, 0.4]])
    assert _draw(probs, None).tolist() == [1, 3]


def test_stop_strings_eos_and_length(tiny_model, tiny_tokenizer):
    tok = tiny_tokenizer
    stream = enc(tok, "x = 12 * 34\nprint(x)\n```\n</code> more")
    g = ForcedHFGenerator(tiny_model, tok, {"a": stream, "b": stream[:3] + [tok.eos_token_id], "c": stream})
    reqs = [GenerationRequest([tok.bos_token_id], key=k) for k in "abc"]
    a, b, c = g.generate(reqs, SamplingParams(max_new_tokens=100, stop=("print(", "</code>")))
    assert (a.finish_reason, a.stop_string, tok.decode(a.token_ids)) == ("stop", "print(", "x = 12 * 34\nprint(")
    assert b.finish_reason == "eos" and b.token_ids == stream[:3] + [tok.eos_token_id]
    g.streams["d"] = stream
    d = g.generate([GenerationRequest([tok.bos_token_id], key="d", max_new_tokens=4)], SamplingParams())[0]
    assert d.finish_reason == "length" and d.token_ids == stream[:4]
    assert c.stop_string == "print(" and d.logprobs and all(x <= 0 for x in d.logprobs)


@pytest.mark.parametrize("calls", [1, 3])
def test_rollout_cached_equals_reprefill_and_prefills_once(tiny_model, tiny_tokenizer, calls):
    """A real-model rollout forced to make `calls` tool calls: the cached path computes every position
    exactly once, the reference recomputes; trajectories (ids, masks, log-probs) are the same, and the
    log-probs equal a full forward pass over prompt + response (interpreter tokens included)."""
    tok = tiny_tokenizer
    text = "".join(f"Step {i}.\n<code>\n```python\nprint({i} * 111)\n```\n</code>" for i in range(calls))
    text += "Done.\n<answer>\n\\boxed{1}\n</answer>"
    ps = prompts(tok)[:2]
    streams = lambda key: enc(tok, text)  # noqa: E731 (every trajectory writes the same text)
    results = []
    for reuse in (True, False):
        gen = ForcedHFGenerator(tiny_model, tok, streams, reuse_cache=reuse)
        results.append(rollout(gen, ps, tok, SubprocessRunner(), RETOOL, max_new_tokens=400, temperature=1.0))
    (tc, mc), (tr, mr) = results
    assert mc["rollout/recompute_ratio"] == 1.0 and mr["rollout/recompute_ratio"] > 1.0
    assert mc["rollout/prefill_tokens"] < mr["rollout/prefill_tokens"]
    for a, b, p in zip(tc, tr, ps):
        assert a.num_calls == calls and a.finish_reason == "answer"
        assert (a.response_ids, a.loss_mask) == (b.response_ids, b.loss_mask)
        assert max(abs(x - y) for x, y in zip(a.logprobs, b.logprobs)) < TOL
        full = full_logprobs(tiny_model, p + a.response_ids)[len(p) - 1:]
        sampled = torch.tensor(a.loss_mask, dtype=torch.bool)
        assert torch.allclose(torch.tensor(a.logprobs)[sampled], full[sampled], atol=TOL)


def test_generation_raises_no_deprecation_warnings(tiny_model, tiny_tokenizer):
    # transformers 5.x warns on every forward given `past_key_values`; the generator passes the current name.
    import warnings

    g = HFGenerator(tiny_model, tiny_tokenizer)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        warnings.simplefilter("error", DeprecationWarning)
        out = g.generate([GenerationRequest(p) for p in prompts(tiny_tokenizer)], GREEDY)
    assert all(len(o.token_ids) > 0 for o in out)
