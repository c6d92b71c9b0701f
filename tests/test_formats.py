"""Tag styles: where generation pauses, what code runs, how output comes back, what the answer is."""

import pytest

from tirl.formats import (
    RETOOL,
    TORL,
    TagStyle,
    extract_boxed,
    find_closed_code,
    format_exec_result,
    get_style,
    has_open_code,
    render_output,
    truncate_middle,
    truncate_middle_tokens,
)


def test_retool_closed_block_yields_its_code():
    text = "Compute it.\n<code>\n```python\nx = 3**5\nprint(x)\n```\n</code>"
    assert find_closed_code(text, RETOOL) == "x = 3**5\nprint(x)"


def test_retool_takes_the_last_block_only():
    text = ("<code>\n```python\nprint(1)\n```\n</code>\n<interpreter>\n1\n</interpreter>\n\n"
            "Again:\n<code>\n```python\nprint(2)\n```\n</code>")
    assert find_closed_code(text, RETOOL) == "print(2)"


def test_retool_block_without_fence_is_taken_verbatim():
    assert find_closed_code("<code>\nprint(7)\n</code>", RETOOL) == "print(7)"


def test_torl_closed_block_yields_its_code():
    text = "We need 17*23.\n```python\nprint(17 * 23)\n```\n```output"
    assert find_closed_code(text, TORL) == "print(17 * 23)"


def test_no_stop_no_code():
    assert find_closed_code("<code>\n```python\nprint(1)\n```\n", RETOOL) is None
    assert find_closed_code("just text </code> in the middle.", RETOOL) is None
    assert find_closed_code("```python\nprint(1)\n```\n", TORL) is None


def test_empty_block_is_reported_as_empty_string():
    assert find_closed_code("<code>\n```python\n```\n</code>", RETOOL) == ""


def test_prompt_may_end_inside_the_code_block():
    prompt = "Problem...\n<code>\n```python\n"
    response = "print(6*7)\n```\n</code>"
    assert find_closed_code(prompt + response, RETOOL) == "print(6*7)"


def test_open_block_detection():
    assert has_open_code("<code>\n```python\nprint(1", RETOOL)
    assert not has_open_code("<code>\n```python\nprint(1)\n```\n</code>", RETOOL)
    assert has_open_code("```python\nwhile True:", TORL)


def test_wrap_code_roundtrip_both_styles():
    for style in (RETOOL, TORL):
        assert find_closed_code("think\n" + style.wrap_code("a = 1\nprint(a)"), style) == "a = 1\nprint(a)"


def test_render_output_wraps_in_interpreter_tags():
    assert render_output("42\n", RETOOL) == "\n<interpreter>\n42\n</interpreter>\n\n"
    assert render_output("42\n", TORL) == "\n42\n```\n"


def test_truncation_keeps_head_and_tail_and_marks_the_middle():
    text = "A" * 500 + "B" * 500
    out = truncate_middle(text, 100)
    assert out.startswith("A" * 50) and out.endswith("B" * 50)
    assert "[900 chars elided]" in out
    assert truncate_middle("short", 100) == "short"


class _CharTokenizer:
    """One token a character: enough to test the token cap."""

    def encode(self, text, add_special_tokens=False):
        return [ord(c) for c in text]

    def decode(self, ids):
        return "".join(chr(i) for i in ids)


def test_truncation_by_tokens():
    out = truncate_middle_tokens("x" * 30 + "y" * 30, 20, _CharTokenizer())
    assert out.startswith("x" * 10) and out.endswith("y" * 10) and "[40 tokens elided]" in out
    rendered = render_output("z" * 1000, RETOOL, max_chars=0, tokenizer=_CharTokenizer(), max_tokens=10)
    assert "[990 tokens elided]" in rendered


def test_exec_result_text():
    assert format_exec_result("ok", "5\n", "") == "5\n"
    assert format_exec_result("ok", "", "") == "(no output)"
    tb = "Traceback (most recent call last):\n  File ...\nNameError: name 'x' is not defined"
    assert format_exec_result("error", "", tb, error_lines=1) == "NameError: name 'x' is not defined"
    assert format_exec_result("error", "", tb).startswith("Traceback")
    assert format_exec_result("timeout", "", "").startswith("TimeoutError")
    assert format_exec_result("memory", "", "").startswith("MemoryError")


@pytest.mark.parametrize(
    "text,expected",
    [
        ("\\boxed{42}", "42"),
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("\\boxed{\\sqrt{\\frac{a}{b}}}", "\\sqrt{\\frac{a}{b}}"),
        ("first \\boxed{1} then \\boxed{2}", "2"),
        ("\\boxed 5", "5"),
        ("\\fbox{7}", "7"),
        ("\\boxed{ 8 }", "8"),
        ("<answer>\n\\boxed{3}\n</answer> later \\boxed{4}", "3"),
        ("no answer here", None),
        ("\\boxed{unbalanced", None),
        ("\\boxed{\\{1,2\\}}", "\\{1,2\\}"),
        ("$x = \\boxed{(1, 2)}$.", "(1, 2)"),
    ],
)
def test_extract_boxed(text, expected):
    assert extract_boxed(text) == expected


def test_styles_by_name_and_from_config():
    assert get_style("retool") is RETOOL and get_style("TORL") is TORL
    custom = get_style({
        "name": "xml", "code_open": "<python>\n", "code_close": "\n", "stop": "</python>",
        "output_prefix": "\n<output>\n", "output_suffix": "\n</output>\n",
    })
    assert isinstance(custom, TagStyle)
    assert find_closed_code("<python>\nprint(3)\n</python>", custom) == "print(3)"
    with pytest.raises(ValueError, match="unknown tag style"):
        get_style("nope")
    with pytest.raises(ValueError, match="unknown tag-style field"):
        TagStyle.from_dict({"name": "x", "colour": "red"})
    with pytest.raises(ValueError, match="missing required"):
        TagStyle.from_dict({"name": "x"})


def test_prompts_carry_the_problem_and_the_format():
    assert "<code>" in RETOOL.system_prompt and "<answer>" in RETOOL.system_prompt
    p = TORL.render_prompt("What is 2+2?")
    assert "What is 2+2?" in p and "\\boxed{}" in p and "```python" in p


def test_torl_fence_runs_a_block_when_its_fence_closes():
    from tirl.formats import TORL_FENCE

    text = "Let me compute.\n```python\nprint(6 * 7)\n```\n"
    assert find_closed_code(text, TORL_FENCE) == "print(6 * 7)"
    assert find_closed_code("think\n" + TORL_FENCE.wrap_code("x = 2\nprint(x)"), TORL_FENCE) == "x = 2\nprint(x)"
    # A closing fence of some other block must not re-run the last python block.
    ran = text + "```output\n42\n```\nAs a table:\n```text\n42\n```\n"
    assert find_closed_code(ran, TORL_FENCE) is None
    assert get_style("torl-fence") is TORL_FENCE
