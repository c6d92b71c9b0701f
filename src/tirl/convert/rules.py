"""Rule-based rewrites for `tirl convert` (`rules: calculator | equation`): real worked solutions become
code-integrated traces without an LLM, and the same pipeline verifies them (`tirl.convert.verify`).

Two sources of steps, read into one `Worked` solution (lines of text, each with the calculations it states):

* ``calculator`` — GSM8K's worked solutions, whose authors marked every arithmetic step with a
  calculator annotation ``<<48/2=24>>``: the expression becomes code, its stated result is the written
  output the real one must equal (`output_check` `values`), and the line with the annotation removed
  (``Natalia sold 48/2 = 24 clips in May.``) is the text. The final ``#### 72`` line is the answer.
* ``equation`` — one arithmetic expression per problem (MAWPS / ASDiv-A / SVAMP's ``equation``): every
  operation, innermost first, becomes a line ``1500 * 8 = 12000`` with its calculation, later lines
  using the earlier results as numbers; results are computed here with Python's own arithmetic on the
  parsed expression (never `eval`) and written to 12 significant digits (`number_text`: float noise
  such as ``0.09999999999999998`` is not a step anyone states); the last is the boxed answer, graded
  against the reference, so a reference rounded otherwise (``3.33333`` for 10 / 3) is rejected.

Two layouts of the code trace (`layout`), one answer at the end:

* ``step`` — one code call per calculation, each a fresh program ``print(48/2)`` placed right before the
  line that states its result (compute, then say it), as the rollout runs them;
* ``program`` — one program per problem, before the first line with a calculation: each calculation a
  variable ``s1 = 48 / 2``, later ones naming earlier results instead of repeating their numbers
  (``s2 = 48 + s1``; a number that also occurs in the problem text stays a number), one printed line
  per step; then all lines of text.

Number format (`number_format`): ``repr`` prints what Python prints (``24.0`` after a division,
``0.30000000000000004`` after float noise); ``plain`` prints a calculation that may give a float with
``f"{x:.12g}"`` (``24``, ``0.3``), so outputs read as the solution's numbers at the cost of longer code.

The text-only twin (`text_twin`) is the same lines and answer with no code: the baseline arm's SFT data.

A solution the rules cannot turn into a trace (no annotation at all, an expression that is not plain
arithmetic) raises `NotRewritable`; the pipeline rejects it as ``no_steps``.

Not covered: solutions without annotations that state their arithmetic in text only (GSM8K's ~1%
algebra solutions: ``Let X be ...``), units or percent signs inside an annotation, operators other
than ``+ - * / //`` and unary minus (no ``**``: a power tower would be computed here).
"""

from __future__ import annotations

import ast
import operator
import re
from dataclasses import dataclass
from typing import Any, Callable

from tirl.convert.llm import NotRewritable
from tirl.formats import TagStyle

RULES = ("calculator", "equation")
LAYOUTS = ("step", "program")
NUMBER_FORMATS = ("repr", "plain")

_ANNOTATION = re.compile(r"<<([^<>]*)>>")
_FINAL = re.compile(r"^\s*####\s*(.*?)\s*$", re.MULTILINE)
_NUMBER_IN_TEXT = re.compile(r"\d[\d,]*(?:\.\d+)?")
_RESULT = re.compile(r"-?(?:\d[\d,]*(?:\.\d*)?|\.\d+)")  # GSM8K writes `.4` and `1,000` too
_OPS: dict[type, tuple[str, Callable[[Any, Any], Any]]] = {
    ast.Add: ("+", operator.add), ast.Sub: ("-", operator.sub),
    ast.Mult: ("*", operator.mul), ast.Div: ("/", operator.truediv), ast.FloorDiv: ("//", operator.floordiv),
}


@dataclass(frozen=True)
class Calc:
    """One calculation: Python arithmetic and the result the solution states for it."""

    expr: str
    result: str


@dataclass(frozen=True)
class Line:
    text: str
    """The line as the text twin shows it (numbers in text, no annotation)."""
    calcs: tuple[Calc, ...] = ()


@dataclass(frozen=True)
class Worked:
    """A worked solution as lines with their calculations, and the final answer."""

    lines: tuple[Line, ...]
    answer: str

    @property
    def calcs(self) -> list[Calc]:
        return [c for line in self.lines for c in line.calcs]


# --- arithmetic, parsed and checked (never `eval`) -----------------------------------------------
def parse_arithmetic(expr: str) -> ast.expr:
    """The expression tree of `expr`; `NotRewritable` unless it holds only numbers, + - * / //, unary
    minus and parentheses."""
    try:
        tree = ast.parse(expr.strip(), mode="eval").body
    except SyntaxError:
        raise NotRewritable(f"not an arithmetic expression: {expr!r}") from None
    for node in ast.walk(tree):
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            continue
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            continue
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            continue
        if isinstance(node, (ast.operator, ast.unaryop)):
            continue
        raise NotRewritable(f"not plain arithmetic ({type(node).__name__}): {expr!r}")
    return tree


def _value(node: ast.expr) -> int | float:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.UnaryOp):
        v = _value(node.operand)
        return -v if isinstance(node.op, ast.USub) else v
    assert isinstance(node, ast.BinOp)
    try:
        return _OPS[type(node.op)][1](_value(node.left), _value(node.right))
    except ZeroDivisionError:
        raise NotRewritable("division by zero") from None


def number_text(x: int | float) -> str:
    """A computed value as a solution writes it: 12 significant digits, so float noise is gone
    (0.7 - 0.6 is `0.1`, 0.28 * 100 is `28`), and an integer without `.0`."""
    if isinstance(x, int):
        return str(x)
    clean = float(f"{x:.12g}")
    return str(int(clean)) if clean.is_integer() and abs(clean) < 2 ** 53 else repr(clean)


def _plain_number(text: str) -> str:
    """A stated result as a number reads everywhere (`.4` -> `0.4`, `1,000` -> `1000`, `5.` -> `5`)."""
    s = text.strip().replace(",", "").rstrip(".")
    sign, s = ("-", s[1:]) if s.startswith("-") else ("", s)
    return sign + ("0" + s if s.startswith(".") else s)


def _floatish(tree: ast.expr) -> bool:
    """Whether the calculation may print as a float (a division or a decimal number in it)."""
    return any(isinstance(n, ast.Div) or (isinstance(n, ast.Constant) and isinstance(n.value, float))
               for n in ast.walk(tree))


# --- reading solutions ----------------------------------------------------------------------------
def calculator_solution(solution: str, answer: str) -> Worked:
    """GSM8K: every `<<expr=result>>` a calculation of its line; the `#### X` line is the answer (graded
    against the reference later), `answer` when there is none. `NotRewritable` when no line holds an
    annotation or one is not `arithmetic=number`."""
    final = _FINAL.search(solution)
    if final is not None and final.group(1):
        answer = _plain_number(final.group(1)) if _RESULT.fullmatch(final.group(1)) else final.group(1)
    body = _FINAL.sub("", solution).strip("\n")
    lines = []
    for raw in body.split("\n"):
        calcs = []
        for m in _ANNOTATION.finditer(raw):
            expr, sep, result = m.group(1).rpartition("=")
            if not sep or not _RESULT.fullmatch(result.strip()):
                raise NotRewritable(f"annotation is not expression=number: {m.group(0)!r}")
            parse_arithmetic(expr)
            calcs.append(Calc(expr.strip(), _plain_number(result)))
        text = _ANNOTATION.sub("", raw).rstrip()
        if text.strip() or calcs:
            lines.append(Line(text, tuple(calcs)))
    if not any(line.calcs for line in lines):
        raise NotRewritable("no <<expression=result>> annotation in the solution")
    return Worked(tuple(lines), answer)


def equation_solution(equation: str) -> Worked:
    """One line per operation of `equation`, innermost first; the answer is the last result."""
    tree = parse_arithmetic(equation)
    lines: list[Line] = []

    def walk(node: ast.expr) -> tuple[str, int | float]:
        """(how the node is written in its parent's line, the value that text stands for)."""
        if not isinstance(node, ast.BinOp):
            return ast.unparse(node), _value(node)
        (left, lv), (right, rv) = walk(node.left), walk(node.right)
        symbol, fn = _OPS[type(node.op)]
        expr = f"{left} {symbol} {right}"
        try:
            text = number_text(fn(lv, rv))
        except ZeroDivisionError:
            raise NotRewritable(f"division by zero in {equation!r}") from None
        lines.append(Line(f"{expr} = {text}", (Calc(expr, text),)))
        # The next line computes from the number as written, as its code will: what it states is
        # what its program prints, and the answer is the last line's number.
        return text, _value(ast.parse(text, mode="eval").body)

    final, _ = walk(tree)
    if not lines:
        raise NotRewritable(f"the equation {equation!r} has no operation to compute")
    return Worked(tuple(lines), final)


# --- writing traces -------------------------------------------------------------------------------
def _print(expr: str, floatish: bool, number_format: str) -> str:
    return f'print(f"{{{expr}:.12g}}")' if floatish and number_format == "plain" else f"print({expr})"


def step_code(calc: Calc, number_format: str) -> str:
    return _print(calc.expr, _floatish(parse_arithmetic(calc.expr)), number_format)


def program_code(calcs: list[Calc], problem: str, number_format: str) -> str:
    """One program: `s{i} = ...` per calculation (earlier results by name), one print per step."""
    given = {float(m.replace(",", "")) for m in _NUMBER_IN_TEXT.findall(problem)}
    results: list[float] = []
    floatish: list[bool] = []
    lines = []
    for i, calc in enumerate(calcs, 1):
        tree = parse_arithmetic(calc.expr)
        uses: list[int] = []

        class Name(ast.NodeTransformer):
            def visit_Constant(self, node: ast.Constant) -> ast.AST:
                v = float(node.value)
                if v in given:
                    return node
                for j in range(len(results) - 1, -1, -1):  # the latest step with that value
                    if results[j] == v:
                        uses.append(j)
                        return ast.Name(f"s{j + 1}", ast.Load())
                return node

        named = Name().visit(tree)
        floatish.append(_floatish(tree) or any(floatish[j] for j in uses))
        results.append(float(calc.result))
        lines.append(f"s{i} = {ast.unparse(named)}")
    prints = [_print(f"s{i}", f, number_format) for i, f in enumerate(floatish, 1)]
    return "\n".join(lines + prints)


def code_trace(worked: Worked, style: TagStyle, layout: str, number_format: str, problem: str = "") -> str:
    """The code-integrated trace: written outputs are the solution's stated results (verification
    checks them against the real ones and puts the real ones in)."""
    check_variant(layout, number_format)
    parts: list[str] = []
    placed = False
    for line in worked.lines:
        if layout == "step":
            for calc in line.calcs:
                parts.append(style.wrap_code(step_code(calc, number_format)) + style.wrap_output(calc.result))
        elif line.calcs and not placed:
            code = program_code(worked.calcs, problem, number_format)
            parts.append(style.wrap_code(code) + style.wrap_output("\n".join(c.result for c in worked.calcs)))
            placed = True
        parts.append(line.text.strip() + "\n")
    return "".join(parts) + style.wrap_answer(worked.answer)


def text_twin(worked: Worked, style: TagStyle) -> str:
    """The same lines and answer, every number in text: the trace of the arm without the tool."""
    return "".join(line.text.strip() + "\n" for line in worked.lines) + style.wrap_answer(worked.answer)


def check_variant(layout: str, number_format: str) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, not {layout!r}")
    if number_format not in NUMBER_FORMATS:
        raise ValueError(f"number_format must be one of {', '.join(NUMBER_FORMATS)}, not {number_format!r}")


class RuleRewriter:
    """A `tirl.convert.llm.Rewriter` that writes each item's trace by rules (the item found by its id,
    the `key` the pipeline passes); `text_twin(key)` gives the same item's text-only trace."""

    def __init__(self, items: list[Any], rules: str, style: TagStyle, layout: str = "step",
                 number_format: str = "repr"):
        if rules not in RULES:
            raise ValueError(f"rules must be one of {', '.join(RULES)}, not {rules!r}")
        check_variant(layout, number_format)
        self.items = {it.id: it for it in items}
        self.rules, self.style, self.layout, self.number_format = rules, style, layout, number_format

    def worked(self, key: str) -> Worked:
        it = self.items[key]
        if self.rules == "calculator":
            return calculator_solution(it.solution, it.answer)
        return equation_solution(it.solution)

    async def rewrite(self, messages: list[dict[str, str]], key: str = "") -> tuple[str, str]:
        worked = self.worked(key)
        return code_trace(worked, self.style, self.layout, self.number_format, self.items[key].problem), "stop"

    def text_twin(self, key: str) -> str:
        return text_twin(self.worked(key), self.style)

    async def aclose(self) -> None:
        pass
