"""SFT traces: every input shape maps to the same segments, rendered as the rollout would; every
rejection names file:line and what is wrong."""

import json

import pytest

from tirl.data import DataError, Segment, load_traces, trace_from_row
from tirl.formats import RETOOL, TORL, extract_boxed

PROBLEM = "What is 123 * 456?"

# What the rollout produces for one call, in each style: the model's text up to the stop (trainable),
# the harness's wrapped output (not trainable), the model's continuation (trainable). Answer tags are
# the data's own text: kept as written whatever the style.
EXPECTED = {
    style.name: [
        Segment("Let me compute it.\n" + style.wrap_code("print(123 * 456)"), True),
        Segment(style.wrap_output("56088"), False),
        Segment("The product is 56088.\n" + RETOOL.wrap_answer("56088"), True),
    ]
    for style in (RETOOL, TORL)
}


def retool_text(ws_after_code="\n", ws_after_interp="\n"):
    return ("Let me compute it.\n<code>\n```python\nprint(123 * 456)\n```\n</code>" + ws_after_code
            + "<interpreter>\n56088\n</interpreter>" + ws_after_interp
            + "The product is 56088.\n<answer>\n\\boxed{56088}\n</answer>")


def torl_text():
    return ("Let me compute it.\n```python\nprint(123 * 456)\n```\n```output\n56088\n```\n"
            "The product is 56088.\n<answer>\n\\boxed{56088}\n</answer>")


def user(content=PROBLEM):
    return {"role": "user", "content": content}


SHAPES = {
    "retool_messages": {"messages": [{"role": "system", "content": "sys"}, user(),
                                     {"role": "assistant", "content": retool_text()}]},
    "retool_messages_loose_whitespace": {"messages": [user(), {"role": "assistant", "content":
                                                      retool_text(" \n\n ", "\n\n\n")}]},
    "tool_calls_json_args": {"messages": [user(), {
        "role": "assistant", "content": "Let me compute it.",
        "tool_calls": [{"id": "c1", "type": "function",
                        "function": {"name": "python", "arguments": json.dumps({"code": "print(123 * 456)"})}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "56088\n"},
        {"role": "assistant", "content": "The product is 56088.\n<answer>\n\\boxed{56088}\n</answer>"}]},
    "tool_calls_dict_args": {"messages": [user(), {
        "role": "assistant", "content": None,
        "tool_calls": [{"function": {"name": "code_interpreter", "arguments": {"code": "print(123 * 456)"}}}]},
        {"role": "tool", "content": "56088"},
        {"role": "assistant", "content": "The product is 56088.\n<answer>\n\\boxed{56088}\n</answer>"}]},
    "tool_inline_fence": {"messages": [user(), {
        "role": "assistant", "content": "Let me compute it.\n```python\nprint(123 * 456)\n```\n"},
        {"role": "tool", "content": "56088"},
        {"role": "assistant", "content": "The product is 56088.\n<answer>\n\\boxed{56088}\n</answer>"}]},
    "torl_messages": {"messages": [user(), {"role": "assistant", "content": torl_text()}]},
    "torl_prompt_response": {"prompt": PROBLEM, "response": torl_text()},
    "retool_prompt_completion": {"prompt": [user()], "completion": retool_text()},
    "trl_conversational_prompt_completion": {"prompt": [user()],
                                             "completion": [{"role": "assistant", "content": retool_text()}]},
    "trl_conversational_completion_with_tool": {"prompt": [user()], "completion": [
        {"role": "assistant", "content": "Let me compute it.\n```python\nprint(123 * 456)\n```\n"},
        {"role": "tool", "content": "56088"},
        {"role": "assistant", "content": "The product is 56088.\n<answer>\n\\boxed{56088}\n</answer>"}]},
}


@pytest.mark.parametrize("style", [RETOOL, TORL], ids=lambda s: s.name)
@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_every_shape_gives_the_rollout_segments(shape, style):
    trace = trace_from_row(SHAPES[shape], style, id="t")
    expected = list(EXPECTED[style.name])
    if shape == "tool_calls_dict_args":  # no text before the call
        expected[0] = Segment(style.wrap_code("print(123 * 456)"), True)
    assert trace.segments == expected
    assert trace.problem == PROBLEM and trace.answer == "56088" and trace.style == style.name


def test_retool_segments_are_the_data_verbatim_when_styles_match():
    # Only the harness's whitespace is normalised; the model's own text is untouched.
    trace = trace_from_row(SHAPES["retool_messages"], RETOOL, id="t")
    assert trace.response == retool_text(ws_after_interp="\n\n")
    assert trace.prompt_messages == [{"role": "system", "content": "sys"}, user()]


def test_text_prompt_is_kept_verbatim_and_row_answer_wins():
    trace = trace_from_row({"prompt": "User: Q\nAssistant:", "response": "no tools \\boxed{3}", "answer": 4},
                           RETOOL, id="t")
    assert trace.prompt_text == "User: Q\nAssistant:" and trace.segments == [Segment("no tools \\boxed{3}", True)]
    assert trace.answer == "4"


def test_several_calls_and_tool_call_ids():
    row = {"messages": [user("q"), {
        "role": "assistant", "content": "Two things.",
        "tool_calls": [{"id": "a", "function": {"name": "python", "arguments": '{"code": "print(1)"}'}},
                       {"id": "b", "function": {"name": "python", "arguments": "print(2)"}}]},
        {"role": "tool", "tool_call_id": "a", "content": "1"},
        {"role": "tool", "tool_call_id": "b", "content": "2"},
        {"role": "assistant", "content": "Done: \\boxed{3}"}]}
    trace = trace_from_row(row, RETOOL, id="t")
    assert trace.segments == [
        Segment("Two things.\n" + RETOOL.wrap_code("print(1)"), True), Segment(RETOOL.wrap_output("1"), False),
        Segment(RETOOL.wrap_code("print(2)"), True), Segment(RETOOL.wrap_output("2"), False),
        Segment("Done: \\boxed{3}", True),
    ]


def test_an_unexecuted_fence_in_torl_stays_text():
    # A ```python block not followed by ```output was shown, not run: the rollout would not stop there.
    text = "Idea:\n```python\nx = 1\n```\nThen run:\n" + torl_text()
    trace = trace_from_row({"prompt": "q", "response": text}, TORL, id="t")
    assert [s.trainable for s in trace.segments] == [True, False, True]
    assert trace.segments[0].text.startswith("Idea:\n```python\nx = 1\n```\nThen run:\nLet me compute it.")


BAD = {
    "no assistant message": ({"messages": [user(), {"role": "tool", "content": "1"}]},
                             "no assistant message (roles: user, tool)"),
    "unbalanced interpreter": ({"prompt": "q", "response": "<code>\nprint(1)\n</code>\n<interpreter>\n1\n"},
                               "unbalanced '<interpreter>' at response line 4: no closing '</interpreter>'"),
    "stray interpreter close": ({"prompt": "q", "response": "hello </interpreter>"},
                                "stray '</interpreter>' at response line 1"),
    "interpreter without code": ({"prompt": "q", "response": "a\n<interpreter>\n1\n</interpreter>"},
                                 "'<interpreter>' at response line 2 is not preceded by a code block"),
    "unclosed code": ({"prompt": "q", "response": "a\n<code>\nprint(1)"}, "unclosed '<code>' at response line 2"),
    "stray code close": ({"prompt": "q", "response": "a </code> b"}, "stray '</code>' at response line 1"),
    "code without output": ({"prompt": "q", "response": "<code>\nprint(1)\n</code>\nso 1"},
                            "code call #1 has no interpreter output after it"),
    "torl output without code": ({"prompt": "q", "response": "x\n```output\n1\n```"},
                                 "'```output' at response line 2 is not preceded by a code block"),
    "torl unclosed output": ({"prompt": "q", "response": "```python\n1\n```\n```output\n1\n"},
                             "unbalanced '```output'"),
    "tool without call": ({"messages": [user(), {"role": "assistant", "content": "hi"},
                                        {"role": "tool", "content": "1"}]},
                          "message 2: tool message without a preceding code call"),
    "call without tool": ({"messages": [user(), {"role": "assistant", "content": "", "tool_calls": [
        {"function": {"name": "python", "arguments": {"code": "1"}}}]}, {"role": "assistant", "content": "x"}]},
                          "message 2: 1 tool call(s) before it have no tool message"),
    "call without code": ({"messages": [user(), {"role": "assistant", "content": "", "tool_calls": [
        {"function": {"name": "search", "arguments": {"query": "1"}}}]}]},
                          "message 1: tool call 'search' has no code argument"),
    "multi-turn": ({"messages": [user(), {"role": "assistant", "content": "a"}, user("more")]},
                   "message 2: user message after the assistant turn"),
    "no user": ({"messages": [{"role": "system", "content": "s"}, {"role": "assistant", "content": "a"}]},
                "no user message with content"),
    "empty assistant": ({"messages": [user(), {"role": "assistant", "content": "  "}]},
                        "the assistant turn is empty"),
    "unknown shape": ({"question": "q", "solution": "s"},
                      "no SFT shape fits the fields present (question, solution): give 'messages', 'prompt' + "
                      "'completion' (or 'response'), or 'text' (docs/data-formats.md)"),
    "conversational completion, text prompt": ({"prompt": "q", "completion": [{"role": "assistant", "content": "a"}]},
                                               "field 'completion' is a message list, so 'prompt' must be one too"),
    "assistant error names message": ({"messages": [user(), {"role": "assistant", "content": "<code>x"}]},
                                      "message 1 (assistant): unclosed '<code>'"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_each_rejection_names_file_line_and_reason(tmp_path, case):
    row, reason = BAD[case]
    good = SHAPES["retool_messages"]
    p = tmp_path / "sft.jsonl"
    p.write_text(json.dumps(good) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(DataError) as e:
        load_traces(p, RETOOL)
    assert f"sft.jsonl:2: {reason}" in str(e.value)


def test_skip_invalid_counts_and_loader_shapes(tmp_path):
    rows = [SHAPES[k] for k in sorted(SHAPES)] + [BAD["no user"][0], "{oops"]
    p = tmp_path / "mixed.jsonl"
    p.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    with pytest.raises(DataError, match=r"and 1 more invalid row"):
        load_traces(p, "torl")
    traces = load_traces(p, "torl", skip_invalid=True)
    assert len(traces) == len(SHAPES) and len(traces.skipped) == 2
    assert [t.id for t in traces[:2]] == ["mixed-0", "mixed-1"] and traces[0].source == f"{p}:1"
    assert {t.answer for t in traces} == {"56088"}
    (tmp_path / "list.json").write_text(json.dumps([dict(SHAPES["torl_messages"], id="abc")]))
    assert [t.id for t in load_traces(tmp_path / "list.json", TORL)] == ["abc"]


def test_built_in_task_traces_load_as_they_were_written():
    # tirl.tasks writes ReTool-SFT rows with the rollout's own rendering: loading must not change them.
    from tirl.tasks.arithmetic import generate
    from tirl.tasks.sft_traces import make_traces

    items = generate(6, seed=1)
    for style in (RETOOL, TORL):
        for row in make_traces(items, style=style, mix={"code": 1, "fix": 1, "text": 1}):
            trace = trace_from_row(row, style, id=row["id"])
            assert trace.response == row["messages"][1]["content"].rstrip()
            assert trace.answer == row["answer"]  # the reference, even where a "text" trace states a wrong one
            assert extract_boxed(trace.response) is not None


def test_tool_messages_are_matched_to_calls_by_id():
    # Outputs answered out of order: each is paired with its own call, in the order the outputs came.
    row = {"messages": [user("q"), {
        "role": "assistant", "content": "",
        "tool_calls": [{"id": "a", "function": {"name": "python", "arguments": {"code": "print(1)"}}},
                       {"id": "b", "function": {"name": "python", "arguments": {"code": "print(2)"}}}]},
        {"role": "tool", "tool_call_id": "b", "content": "2"},
        {"role": "tool", "tool_call_id": "a", "content": "1"},
        {"role": "assistant", "content": "\\boxed{3}"}]}
    segs = trace_from_row(row, TORL, id="t").segments
    assert segs[0] == Segment(TORL.wrap_code("print(2)"), True) and segs[1] == Segment(TORL.wrap_output("2"), False)
    assert segs[2] == Segment(TORL.wrap_code("print(1)"), True) and segs[3] == Segment(TORL.wrap_output("1"), False)


def test_text_rows_are_read_whole_with_the_interpreter_output_apart():
    """TRL's language-modeling shape: no prompt; the text's own code and output still split the segments."""
    trace = trace_from_row({"text": "Question: " + PROBLEM + "\n" + retool_text()}, RETOOL, id="t")
    assert trace.prompt_messages == [] and trace.prompt_text == ""
    assert trace.answer == "56088" and [s.trainable for s in trace.segments] == [True, False, True]
    assert trace.segments[0].text.startswith("Question: " + PROBLEM)
