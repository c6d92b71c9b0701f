"""The SFT loss mask, token by token: 1 exactly on the model's own tokens (and EOS), 0 on the prompt and
on interpreter output, with segment tokens identical to what the rollout would produce."""

import pytest

from tirl.data import IGNORE_INDEX, build_prompt, tokenize_trace, tokenize_traces, trace_from_row
from tirl.formats import RETOOL, TORL, format_exec_result, render_output

PROBLEM = "A shop sells 37 boxes of 1289 pens and 12 more pens. How many pens?"
ERROR = "NameError: name 'boxs' is not defined"


def retool_row():
    """A real-looking ReTool-SFT row: a failing call, a fix, a check, then the answer."""
    return {"id": "shop", "answer": "47705", "messages": [
        {"role": "user", "content": PROBLEM},
        {"role": "assistant", "content": (
            "We need 37 * 1289 + 12. Let me compute it.\n"
            "<code>\n```python\nboxes = 37\nprint(boxs * 1289 + 12)\n```\n</code>\n"
            f"<interpreter>\n{ERROR}\n</interpreter>\n\n"
            "A typo; fixing the name.\n"
            "<code>\n```python\nboxes = 37\nprint(boxes * 1289 + 12)\n```\n</code>\n"
            "<interpreter>\n47705\n</interpreter>\n\n"
            "So there are 47705 pens.\n<answer>\n\\boxed{47705}\n</answer>")},
    ]}


def torl_row():
    return {"prompt": PROBLEM, "answer": "47705", "response": (
        "We need 37 * 1289 + 12. Let me compute it.\n"
        "```python\nboxes = 37\nprint(boxs * 1289 + 12)\n```\n```output\n" + ERROR + "\n```\n"
        "A typo; fixing the name.\n"
        "```python\nboxes = 37\nprint(boxes * 1289 + 12)\n```\n```output\n47705\n```\n"
        "So there are 47705 pens: \\boxed{47705}")}


@pytest.fixture(scope="module")
def tok():
    from tirl.models import train_tokenizer

    corpus = []
    for style in (RETOOL, TORL):
        corpus += [trace_from_row(r, style, id="c").response for r in (retool_row(), torl_row())]
    corpus += [PROBLEM, RETOOL.system_prompt, TORL.prompt_template]
    # Injected outputs on their own, as the rollout encodes them: they end in "\n\n", so the tokenizer
    # learns a "\n\n" token that a tokenisation of the joined text would not use (see the test below).
    corpus += [render_output(o, RETOOL) for o in ("47705", ERROR, "12", "(no output)")]
    return train_tokenizer(corpus * 3, vocab_size=400)


def runs(mask):
    """[(start, end, value)] of maximal constant runs of `mask`."""
    out, start = [], 0
    for i in range(1, len(mask) + 1):
        if i == len(mask) or mask[i] != mask[start]:
            out.append((start, i, mask[start]))
            start = i
    return out


def enc(tok, text):
    return tok.encode(text, add_special_tokens=False)


@pytest.mark.parametrize("use_chat_template", [False, True], ids=["plain", "chat"])
@pytest.mark.parametrize("style,row", [(RETOOL, retool_row), (TORL, torl_row)], ids=["retool", "torl"])
def test_mask_spans_token_by_token(tok, style, row, use_chat_template):
    trace = trace_from_row(row(), style, id="t")
    ex = tokenize_trace(trace, tok, use_chat_template=use_chat_template)
    ids, mask = ex["input_ids"], ex["loss_mask"]

    if use_chat_template:
        prompt = tok.apply_chat_template(trace.prompt_messages, add_generation_prompt=True, tokenize=False)
        assert prompt.startswith("<|im_start|>user\n" + PROBLEM) and prompt.endswith("<|im_start|>assistant\n")
    else:
        prompt = PROBLEM
    # Expected spans, by hand from the row: prompt | code 1 | error | fix + code 2 | output | answer + EOS.
    o1 = render_output(format_exec_result("error", "", ERROR), style)  # what the rollout would inject
    o2 = render_output(format_exec_result("ok", "47705\n", ""), style)
    texts = [s.text for s in trace.segments]
    assert texts[1] == o1 and texts[3] == o2
    assert texts[0].startswith("We need 37") and texts[0].endswith(style.stop)
    assert texts[2].startswith("A typo") and texts[2].endswith(style.stop)
    assert texts[4].startswith("So there are 47705 pens") and texts[4].endswith("\\boxed{47705}" + (
        "\n</answer>" if style is RETOOL else ""))
    expected = [(prompt, 0), (texts[0], 1), (o1, 0), (texts[2], 1), (o2, 0), (texts[4], 1)]

    spans = runs(mask)
    assert [v for _, _, v in spans] == [v for _, v in expected]
    for (start, end, _), (text, _) in zip(spans, expected):
        want = enc(tok, text)
        got = ids[start:end]
        if end == len(ids):  # the last trainable span ends with EOS
            assert got[-1] == tok.eos_token_id
            got = got[:-1]
        assert got == want, (text, tok.convert_ids_to_tokens(got), tok.convert_ids_to_tokens(want))
        assert tok.decode(got) == text
    # Token by token: every interpreter token is masked, every model token is trained.
    trained = [tok.decode([t]) for t, m in zip(ids, mask) if m]
    assert "".join(trained) == texts[0] + texts[2] + texts[4] + tok.eos_token
    assert ex["labels"] == [t if m else IGNORE_INDEX for t, m in zip(ids, mask)]
    assert ex["attention_mask"] == [1] * len(ids) and ex["num_truncated"] == 0
    assert ex["num_prompt_tokens"] == len(enc(tok, prompt))


def test_interpreter_tokens_match_rollout_injection(tok):
    # The rollout encodes the rendered output on its own; so must SFT, or the masked span differs.
    trace = trace_from_row(retool_row(), RETOOL, id="t")
    ex = tokenize_trace(trace, tok)
    injected = enc(tok, render_output("47705", RETOOL))
    ids = ex["input_ids"]
    starts = [i for i in range(len(ids)) if ids[i:i + len(injected)] == injected]
    assert len(starts) == 1 and set(ex["loss_mask"][starts[0]:starts[0] + len(injected)]) == {0}


def test_style_rebuilds_the_rl_prompt(tok):
    trace = trace_from_row(retool_row(), RETOOL, id="t")
    for chat in (False, True):
        ex = tokenize_trace(trace, tok, style=RETOOL, use_chat_template=chat)
        prompt = build_prompt(PROBLEM, RETOOL, tok, use_chat_template=chat)
        assert ex["input_ids"][:ex["num_prompt_tokens"]] == enc(tok, prompt)
        assert RETOOL.system_prompt.split("\n")[0] in tok.decode(ex["input_ids"][:ex["num_prompt_tokens"]])


def test_truncation_is_reported_and_keeps_the_prefix(tok, caplog):
    trace = trace_from_row(torl_row(), TORL, id="t")
    full = tokenize_trace(trace, tok)
    cut = tokenize_trace(trace, tok, max_length=len(full["input_ids"]) - 7)
    assert cut["num_truncated"] == 7
    for key in ("input_ids", "loss_mask", "labels"):
        assert cut[key] == full[key][:-7]
    with caplog.at_level("WARNING", logger="tirl.data"):
        out = tokenize_traces([trace, trace], tok, max_length=len(full["input_ids"]) - 7)
    assert [e["num_truncated"] for e in out] == [7, 7] and "truncated 2 of 2 traces" in caplog.text
    with pytest.raises(ValueError, match="the prompt alone is"):
        tokenize_trace(trace, tok, max_length=3)


def test_joined_text_would_tokenise_differently_at_a_boundary(tok):
    # Why segments are tokenised one by one: the rollout appends "...</interpreter>\n\n" encoded on its
    # own (ending in a "\n\n" token), while encoding the joined text splits the newlines before the next
    # word. A mask built from the joined text would train on ids the rollout never produces.
    trace = trace_from_row(retool_row(), RETOOL, id="t")
    per_segment = tokenize_trace(trace, tok, add_eos=False)["input_ids"]
    joined = enc(tok, PROBLEM) + enc(tok, trace.response)
    assert tok.decode(per_segment) == tok.decode(joined)
    assert per_segment != joined
    assert enc(tok, "\n\n")[-1] in per_segment and enc(tok, "\n\n")[-1] not in joined


def test_a_text_row_gets_no_prompt_and_trains_all_but_the_interpreter_output(tok):
    """TRL's language-modeling rows: the style's prompt is not added; every token of the text is trained
    except the interpreter's output, which the harness writes."""
    trace = trace_from_row({"text": PROBLEM + "\n" + retool_row()["messages"][-1]["content"]}, RETOOL, id="t")
    ex = tokenize_trace(trace, tok, RETOOL)
    assert ex["num_prompt_tokens"] == 0 and ex["loss_mask"][0] == 1
    masked = [i for i, m in zip(ex["input_ids"], ex["loss_mask"]) if not m]
    assert tok.decode(masked) == "".join(s.text for s in trace.segments if not s.trainable)
    assert tok.decode(ex["input_ids"][:-1]) == trace.response and trace.response.startswith(PROBLEM + "\n")
