"""The transformers backend's shortcuts change no numbers: one prefill per distinct prompt for the samples
of a GRPO group, and stop strings matched on token ids or only when a token could complete one."""

from __future__ import annotations

import torch
from fixtures_models import tiny_model, tiny_model_dir, tiny_tokenizer  # noqa: F401 (fixtures)
from forced_generator import ForcedHFGenerator

from tirl.generation import GenerationRequest, SamplingParams
from tirl.generation.hf import HFGenerator

TOL = 1e-4


def enc(tok, s):
    return tok.encode(s, add_special_tokens=False)


class _CountTokens:
    """Counts token positions the model's embedding layer sees (prefill + decode work)."""

    def __init__(self, model):
        self.n = 0
        self.handle = model.get_input_embeddings().register_forward_hook(self)

    def __call__(self, module, args, out):
        self.n += args[0].numel()


def test_group_samples_share_one_prompt_prefill_and_match_separate_prefills(tiny_model, tiny_tokenizer):
    tok = tiny_tokenizer
    long_prompt = enc(tok, "What is 12 times 34? Let me compute it. The product is 408. " * 3)
    other = enc(tok, "Hi")
    reqs = lambda: [GenerationRequest(long_prompt, key=("a", i)) for i in range(4)] + [  # noqa: E731
        GenerationRequest(other, key=("b", 0))]
    params = SamplingParams(max_new_tokens=10, temperature=0)
    outs, work = {}, {}
    for share in (False, True):
        g = HFGenerator(tiny_model, tok, share_prefix=share)
        counter = _CountTokens(tiny_model)
        first = g.generate(reqs(), params)
        # a second turn continues from each row's own cache (tool output appended)
        tool = enc(tok, "<interpreter>408</interpreter>")
        second = g.generate([GenerationRequest(r.token_ids + o.token_ids + tool, key=r.key)
                             for r, o in zip(reqs(), first)], params)
        counter.handle.remove()
        outs[share], work[share] = (first, second), counter.n
    for a, b in zip(outs[False][0] + outs[False][1], outs[True][0] + outs[True][1]):
        assert a.token_ids == b.token_ids
        assert max(abs(x - y) for x, y in zip(a.logprobs, b.logprobs)) < TOL
    assert len(set(outs[True][0][0].token_ids)) > 3  # varied output: a real check
    # the 4 samples of the long prompt prefilled it once, not 4 times (batch padding aside)
    assert work[True] <= work[False] - 2 * len(long_prompt)


def test_sampled_group_rows_differ_after_sharing(tiny_model, tiny_tokenizer):
    """Shared keys/values are copied, not aliased: rows sampled from one prompt go their own ways."""
    tok = tiny_tokenizer
    p = enc(tok, "What is 12 times 34?")
    outs = HFGenerator(tiny_model, tok).generate([GenerationRequest(p, key=i) for i in range(6)],
                                                 SamplingParams(max_new_tokens=12, temperature=1.0, seed=3))
    assert len({tuple(o.token_ids) for o in outs}) > 1


def test_stop_found_as_one_tag_token_and_spelled_out_in_pieces(tiny_model, tiny_tokenizer):
    tok = tiny_tokenizer
    tag = enc(tok, "</code>")
    assert len(tag) == 1  # the tiny tokenizer has tag tokens: the id path
    pieces = [tok.convert_tokens_to_ids(c) for c in "</code>"]  # the same text, one byte-level token a char
    assert tok.unk_token_id not in pieces and tok.decode(pieces) == "</code>"
    body = enc(tok, "x = 12 * 34")
    after = enc(tok, " more")
    streams = {"id": body + tag + after, "pieces": body + pieces + after}
    g = ForcedHFGenerator(tiny_model, tok, streams)
    outs = g.generate([GenerationRequest(enc(tok, "Hi"), key=k) for k in streams],
                      SamplingParams(max_new_tokens=40, temperature=1.0, stop=["</code>"]))
    assert outs[0].finish_reason == "stop" and outs[0].stop_string == "</code>" and outs[0].token_ids == body + tag
    assert outs[1].finish_reason == "stop" and outs[1].stop_string == "</code>" and outs[1].token_ids == body + pieces


def test_only_rows_the_caller_resumes_keep_their_cache(tiny_model, tiny_tokenizer):
    tok = tiny_tokenizer
    code = enc(tok, "x = 12 * 34\n</code>")
    answer = enc(tok, "so 408 </answer>")
    streams = {"code": code, "answer": answer, "eos": code[:2] + [tok.eos_token_id],
               "length": enc(tok, "and so on " * 10)}
    params = dict(max_new_tokens=len(code) + 2, temperature=1.0, stop=("</code>", "</answer>"))
    for after, kept in (((("</code>",)), {"code"}), (None, set(streams))):
        g = ForcedHFGenerator(tiny_model, tok, streams)
        outs = g.generate([GenerationRequest(enc(tok, "Hi"), key=k) for k in streams],
                          SamplingParams(**params, resume_after=after))
        assert [o.finish_reason for o in outs] == ["stop", "stop", "eos", "length"]
        assert set(g.cached_keys()) == kept  # the rollout goes on only after a closed code block


def test_finished_rows_leave_the_batch_at_once_without_changing_outputs(tiny_model, tiny_tokenizer):
    tok = tiny_tokenizer
    body = enc(tok, "x = 12 * 34 and then some more words to write")
    streams = {k: body[: 2 + 3 * k] + [tok.eos_token_id] for k in range(4)}  # rows end at different steps
    outs, work = {}, {}
    for at in (0.0, 0.5):
        g = ForcedHFGenerator(tiny_model, tok, streams, drop_finished_at=at)
        counter = _CountTokens(tiny_model)
        outs[at] = g.generate([GenerationRequest(enc(tok, "Hi there"), key=k) for k in streams],
                              SamplingParams(max_new_tokens=40, temperature=1.0))
        counter.handle.remove()
        work[at] = counter.n
    for a, b in zip(outs[0.0], outs[0.5]):
        assert a.token_ids == b.token_ids and a.finish_reason == b.finish_reason == "eos"
        assert max(abs(x - y) for x, y in zip(a.logprobs, b.logprobs)) < TOL
    assert work[0.0] < work[0.5]


def test_sampled_tokens_do_not_depend_on_when_finished_rows_leave(tiny_model, tiny_tokenizer):
    tok = tiny_tokenizer
    reqs = [GenerationRequest(enc(tok, p), max_new_tokens=m)  # rows finish at different steps
            for p in ("Hi", "Hi there", "What is 12 times 34?") for m in (5, 11, 24)]
    runs = {}
    for at in (0.0, 0.5, 1.0):  # at once, when half are done, when all are done
        g = HFGenerator(tiny_model, tok, drop_finished_at=at)
        runs[at] = g.generate(reqs, SamplingParams(max_new_tokens=24, temperature=1.0, seed=5))
    for at in (0.5, 1.0):  # finished rows kept in the batch draw no random numbers
        assert [o.token_ids for o in runs[at]] == [o.token_ids for o in runs[0.0]]


def test_preallocated_cache_equals_a_growing_one_over_tool_turns(tiny_model, tiny_tokenizer):
    tok = tiny_tokenizer
    ps = [enc(tok, "What is 12 times 34?"), enc(tok, "Hi"), enc(tok, "The product is 1024.")]
    params = SamplingParams(max_new_tokens=10, temperature=0)
    runs = []
    for pre in (False, True):
        g = HFGenerator(tiny_model, tok, preallocate=pre)
        first = g.generate([GenerationRequest(p, key=i) for i, p in enumerate(ps)], params)
        tool = [enc(tok, "<interpreter>408</interpreter>"), enc(tok, "<interpreter>1</interpreter>"), []]
        second = g.generate([GenerationRequest(p + o.token_ids + t, key=i)
                             for i, (p, o, t) in enumerate(zip(ps, first, tool))], params)
        runs.append(first + second)
    for a, b in zip(*runs):
        assert a.token_ids == b.token_ids
        assert max(abs(x - y) for x, y in zip(a.logprobs, b.logprobs)) < TOL


def test_cache_buffer_grows_as_needed_and_changes_no_numbers(tiny_model, tiny_tokenizer, monkeypatch):
    from tirl.generation import kv_cache

    monkeypatch.setattr(kv_cache, "MIN_ROOM", 2)  # so 30 decode steps grow the buffer several times
    made = []
    real_empty = torch.Tensor.new_empty
    monkeypatch.setattr(torch.Tensor, "new_empty", lambda t, shape, **kw: made.append(tuple(shape)) or real_empty(t, shape, **kw))
    tok = tiny_tokenizer
    ps = [enc(tok, "What is 12 times 34?"), enc(tok, "Hi")]
    params = SamplingParams(max_new_tokens=30, temperature=0)
    runs = {pre: HFGenerator(tiny_model, tok, preallocate=pre).generate([GenerationRequest(p) for p in ps], params)
            for pre in (False, True)}
    for a, b in zip(runs[False], runs[True]):
        assert a.token_ids == b.token_ids
        assert max(abs(x - y) for x, y in zip(a.logprobs, b.logprobs)) < TOL
    lengths = sorted({shape[2] for shape in made if len(shape) == 4})
    longest = max(len(p) for p in ps) + 30
    assert len(lengths) > 2 and max(lengths) <= longest  # grown step by step, never past the bound


def test_cache_buffer_length_has_room_to_spare_up_to_the_bound():
    from tirl.generation.kv_cache import MIN_ROOM, buffer_length

    assert buffer_length(100, 10_000) == 100 + MIN_ROOM
    assert buffer_length(1000, 10_000) == 1250
    assert buffer_length(1000, 1100) == 1100
    assert buffer_length(1200, 1100) == 1200  # past the bound: what is needed


def test_bf16_generation_uses_a_copy_refreshed_after_every_weight_update(tiny_model_dir, tiny_tokenizer):
    from tirl.models import load_model

    tok = tiny_tokenizer
    model = load_model(tiny_model_dir, device="cpu")
    reqs = lambda: [GenerationRequest(enc(tok, "What is 12 times 34?"))]  # noqa: E731
    params = SamplingParams(max_new_tokens=10, temperature=0)
    g = HFGenerator(model, tok, precision="bf16")
    g.generate(reqs(), params)
    assert g._copy is not None and next(g._copy.parameters()).dtype == torch.bfloat16
    assert next(model.parameters()).dtype == torch.float32  # the trained weights are untouched
    with torch.no_grad():  # an "optimizer step": in place, as torch optimizers do
        for p in model.parameters():
            p.mul_(1.5)
    after = g.generate(reqs(), params)[0]
    fresh = HFGenerator(model, tok, precision="bf16").generate(reqs(), params)[0]
    assert after.token_ids == fresh.token_ids and after.logprobs == fresh.logprobs
    # and it stays near autocast (both round to bf16; the copy also keeps activations in bf16)
    auto = HFGenerator(model, tok, precision="bf16", half_copy=False).generate(reqs(), params)[0]
    assert max(abs(a - b) for a, b in zip(after.logprobs, auto.logprobs)) < 0.3
    # Before an update the trainer drops the copy's weights (they would sit under its memory peak) ...
    g.release_stale()
    assert sum(p.numel() for p in g._copy.parameters()) == 0
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.5)
    # ... and the next generation refills them from the updated weights, tied ones still tied.
    again = g.generate(reqs(), params)[0]
    fresh = HFGenerator(model, tok, precision="bf16").generate(reqs(), params)[0]
    assert again.token_ids == fresh.token_ids and again.logprobs == fresh.logprobs
    assert g._copy.get_output_embeddings().weight is g._copy.get_input_embeddings().weight
    assert all(p.dtype == torch.bfloat16 and p.numel() for p in g._copy.parameters())


def test_bf16_copy_holds_the_weights_rounded_once_and_keeps_tied_ones_tied(tiny_model_dir, tiny_tokenizer):
    from tirl.models import load_model

    model = load_model(tiny_model_dir, device="cpu")
    copy = HFGenerator(model, tiny_tokenizer, precision="bf16")._sampling_model()
    src, dst = dict(model.named_parameters()), dict(copy.named_parameters())
    assert src.keys() == dst.keys()
    for name, p in src.items():
        assert torch.equal(dst[name], p.detach().to(torch.bfloat16)) and not dst[name].requires_grad
    # tie_word_embeddings: the output layer is the embedding, in the copy as in the model
    assert copy.get_output_embeddings().weight is copy.get_input_embeddings().weight
    assert copy.get_output_embeddings().weight.dtype == torch.bfloat16
    buffers = dict(copy.named_buffers())
    assert all(b.dtype == dict(model.named_buffers())[n].dtype for n, b in buffers.items())  # rotary stays float32


def test_bf16_prefill_logits_equal_with_a_contiguous_output_layer_input(tiny_model_dir, tiny_tokenizer):
    # The copy's output layer gets its input made contiguous (a strided one made torch copy the weight
    # once per row: 1.7 GB on SmolLM2); the logits of a padded prefill are bit for bit the same.
    import copy as copy_module

    from tirl.models import load_model

    model = load_model(tiny_model_dir, device="cpu")
    hooked = HFGenerator(model, tiny_tokenizer, precision="bf16")._sampling_model()
    plain = copy_module.deepcopy(hooked)
    plain.get_output_embeddings()._forward_pre_hooks.clear()
    ids = torch.randint(5, 100, (3, 9))
    mask = torch.ones_like(ids)
    mask[0, :4] = mask[1, :2] = 0
    with torch.inference_mode():
        a = hooked(input_ids=ids, attention_mask=mask, logits_to_keep=1).logits
        b = plain(input_ids=ids, attention_mask=mask, logits_to_keep=1).logits
    assert hooked.get_output_embeddings()._forward_pre_hooks and not plain.get_output_embeddings()._forward_pre_hooks
    assert torch.equal(a, b)
