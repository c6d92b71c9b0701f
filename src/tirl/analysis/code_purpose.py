"""What a code snippet is for, by static analysis (ReTool's analysis of code purposes).

`classify_code(code) -> str` returns one of `PURPOSES`. The code is parsed with `ast` and never
executed. Import aliases are resolved first (`import numpy as np`, `from scipy.optimize import brentq`,
`from sympy import *`), so a call is judged by its qualified name (`numpy.linalg.solve`).

Rules, in order of precedence (the first that matches wins):

1. `invalid` — the code does not parse (SyntaxError, null bytes, ...).
2. `verification` — the snippet checks a value: an `assert` anywhere; a comparison inside the
   arguments of a `print(...)` (`print(191 * 683 == 130453)`, `print(all(f(n) == g(n) for n in ...))`),
   except in a comprehension's `if` filter, which is a search; outside loops, an `if` whose test is
   an `==`/`!=` comparison, or a check call (`math.isclose`, `numpy.isclose`/`allclose`/`array_equal`,
   `.equals(...)`). Checking outranks how the value is computed: re-computing a claimed result by
   brute force is still verification.
3. `simulation` — randomness: any use of `random`, `numpy.random` or `secrets` (Monte Carlo).
4. `numeric` — numerical methods: `scipy.optimize|integrate|linalg|interpolate|stats`, `numpy.linalg`,
   `numpy.roots|polyfit|trapz|trapezoid|gradient|interp`, `mpmath.findroot|quad|nsum`,
   `sympy.nsolve`; or an iteration that stops on a tolerance (a `while` test, or a comparison inside
   a loop, against a float literal in (0, 1e-4], or a name assigned such a literal): hand-written
   Newton or bisection.
5. `symbolic` — computer algebra: a call to a sympy algebra function (`symbols`, `Symbol`, `solve`,
   `simplify`, `expand`, `factor`, `diff`, `integrate`, `limit`, `series`, `Matrix`, ... see
   `_SYMPY_ALGEBRA`). Sympy's number-theory helpers (`isprime`, `factorint`, `divisors`, ...) do not
   count: they compute, they do not manipulate expressions.
6. `enumeration` — search over cases: a `for`/`while` loop, a comprehension or generator expression,
   a `range(...)` call, `itertools.permutations|combinations|combinations_with_replacement|product`,
   or a function that calls itself (recursive search).
7. `arithmetic` — straight-line computation (none of the above): at least one arithmetic operator
   (`+ - * / // % ** @`) or a call into `math`, `cmath`, `fractions`, `decimal`, `statistics`,
   `numpy`, `sympy` or a numeric builtin (`abs`, `pow`, `round`, `divmod`, `sum`, `min`, `max`, `int`,
   `float`).
8. `other` — anything else (printing a constant, string handling, an empty snippet).

Simplifications: one label per snippet (a snippet that both solves and checks is `verification`);
the conversation around the code is not seen, so "re-computing a claimed result" is recognised only
when the claim is written into the code as a comparison; names are resolved per module, not per scope;
method calls on objects (`expr.subs(...)`) are not typed. Not covered: code split over several calls
(each snippet is judged alone), non-Python code.
"""

from __future__ import annotations

import ast
import builtins
import warnings

PURPOSES: tuple[str, ...] = (
    "arithmetic", "symbolic", "enumeration", "verification", "numeric", "simulation", "other", "invalid",
)

_SYMPY_ALGEBRA = frozenset({
    "symbols", "Symbol", "var", "solve", "solveset", "linsolve", "nonlinsolve", "roots", "Poly",
    "simplify", "expand", "factor", "collect", "cancel", "apart", "together", "trigsimp", "powsimp",
    "radsimp", "sqrtdenest", "nsimplify", "expand_trig", "logcombine", "diff", "integrate", "limit",
    "series", "summation", "product", "Eq", "dsolve", "rsolve", "Matrix", "Function", "Sum",
    "Integral", "Derivative", "lambdify", "sympify",
})
_ENUM_CALLS = frozenset({
    "itertools.permutations", "itertools.combinations", "itertools.combinations_with_replacement",
    "itertools.product",
})
_NUMERIC_PREFIXES = (
    "scipy.optimize", "scipy.integrate", "scipy.linalg", "scipy.interpolate", "scipy.stats",
    "numpy.linalg", "numpy.roots", "numpy.polyfit", "numpy.trapz", "numpy.trapezoid", "numpy.gradient",
    "numpy.interp", "mpmath.findroot", "mpmath.quad", "mpmath.nsum", "sympy.nsolve",
)
_SIM_PREFIXES = ("random", "numpy.random", "secrets")
_CHECK_CALLS = frozenset({
    "math.isclose", "cmath.isclose", "numpy.isclose", "numpy.allclose", "numpy.array_equal",
})
_MATH_MODULES = ("math", "cmath", "fractions", "decimal", "statistics", "numpy", "sympy")
_NUMERIC_BUILTINS = frozenset({"abs", "pow", "round", "divmod", "sum", "min", "max", "int", "float"})
_ARITH_OPS = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow, ast.MatMult)
_LOOPS = (ast.For, ast.AsyncFor, ast.While)
_COMPREHENSIONS = (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)
_TOLERANCE = 1e-4
_BUILTINS = frozenset(dir(builtins))


def classify_code(code: str) -> str:
    """The purpose of one snippet (one of `PURPOSES`); see the module docstring for the rules."""
    try:
        with warnings.catch_warnings():  # model-written code: its SyntaxWarnings are not ours to print
            warnings.simplefilter("ignore", SyntaxWarning)
            tree = ast.parse(code)
    except (SyntaxError, ValueError):
        return "invalid"
    facts = _Facts(tree)
    if facts.verifies():
        return "verification"
    if facts.any_call(lambda q: _under(q, _SIM_PREFIXES)) or facts.imports & {"random", "secrets"}:
        return "simulation"
    if facts.any_call(lambda q: _under(q, _NUMERIC_PREFIXES)) or facts.tolerance_loop():
        return "numeric"
    if facts.any_call(lambda q: q.startswith("sympy.") and q.rsplit(".", 1)[1] in _SYMPY_ALGEBRA):
        return "symbolic"
    if facts.loops or facts.comprehensions or facts.recursive() or facts.any_call(
            lambda q: q in _ENUM_CALLS or q == "range"):
        return "enumeration"
    if facts.arith_ops or facts.any_call(
            lambda q: _under(q, _MATH_MODULES) or q in _NUMERIC_BUILTINS):
        return "arithmetic"
    return "other"


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


class _Facts:
    """One walk over the tree: the resolved calls and the structural features the rules need."""

    def __init__(self, tree: ast.Module) -> None:
        self.tree = tree
        self.aliases: dict[str, str] = {}
        self.star_modules: list[str] = []
        self.imports: set[str] = set()
        self._collect_imports()
        self.calls: list[str] = []  # qualified names of every call
        self.loops = [n for n in ast.walk(tree) if isinstance(n, _LOOPS)]
        self.comprehensions = [n for n in ast.walk(tree) if isinstance(n, _COMPREHENSIONS)]
        self.arith_ops = [n for n in ast.walk(tree)
                          if isinstance(n, ast.BinOp) and isinstance(n.op, _ARITH_OPS)
                          or isinstance(n, ast.AugAssign) and isinstance(n.op, _ARITH_OPS)]
        for n in ast.walk(tree):
            if isinstance(n, ast.Call):
                q = self.qualify(n.func)
                if q:
                    self.calls.append(q)

    def _collect_imports(self) -> None:
        for n in ast.walk(self.tree):
            if isinstance(n, ast.Import):
                for a in n.names:
                    self.imports.add(a.name.split(".")[0])
                    if a.asname:
                        self.aliases[a.asname] = a.name
                    else:  # `import scipy.optimize` binds `scipy`
                        top = a.name.split(".")[0]
                        self.aliases[top] = top
            elif isinstance(n, ast.ImportFrom) and n.module and n.level == 0:
                self.imports.add(n.module.split(".")[0])
                for a in n.names:
                    if a.name == "*":
                        self.star_modules.append(n.module)
                    else:
                        self.aliases[a.asname or a.name] = f"{n.module}.{a.name}"

    def qualify(self, node: ast.AST) -> str | None:
        """`np.linalg.solve` -> `numpy.linalg.solve`; a bare name from a star import gets its module;
        a method on an unknown object keeps only its attribute (`.equals` -> `?.equals`)."""
        parts = []
        while isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        if not isinstance(node, ast.Name):
            return "?." + ".".join(reversed(parts)) if parts else None
        head = self.aliases.get(node.id)
        if head is None and node.id not in _BUILTINS:
            star = next((m for m in self.star_modules if _star_provides(m, node.id)), None)
            head = f"{star}.{node.id}" if star else node.id
        head = head or node.id
        return ".".join([head, *reversed(parts)])

    def any_call(self, pred) -> bool:
        return any(pred(q) for q in self.calls)

    def verifies(self) -> bool:
        if any(isinstance(n, ast.Assert) for n in ast.walk(self.tree)):
            return True
        for n in ast.walk(self.tree):
            if isinstance(n, ast.Call) and self.qualify(n.func) == "print":
                if any(_compares_outside_filters(a) for a in [*n.args, *(k.value for k in n.keywords)]):
                    return True
        for n in _outside_loops(self.tree):
            if isinstance(n, ast.If) and _is_equality(n.test):
                return True
            if isinstance(n, ast.Call):
                q = self.qualify(n.func) or ""
                if q in _CHECK_CALLS or q.endswith(".equals"):
                    return True
        return False

    def tolerance_loop(self) -> bool:
        small_names = {t.id for n in ast.walk(self.tree) if isinstance(n, ast.Assign) and _is_small(n.value)
                       for t in n.targets if isinstance(t, ast.Name)}

        def tiny(e: ast.AST) -> bool:
            return _is_small(e) or isinstance(e, ast.Name) and e.id in small_names

        for loop in self.loops:
            scope = [loop.test] if isinstance(loop, ast.While) else loop.body
            for part in scope:
                for c in ast.walk(part):
                    if isinstance(c, ast.Compare) and any(tiny(x) for x in [c.left, *c.comparators]):
                        return True
        return False

    def recursive(self) -> bool:
        for f in ast.walk(self.tree):
            if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if any(isinstance(c, ast.Call) and isinstance(c.func, ast.Name) and c.func.id == f.name
                       for c in ast.walk(f)):
                    return True
        return False


def _star_provides(module: str, name: str) -> bool:
    """Whether `from module import *` is the likely source of `name` (only names the rules know)."""
    q = f"{module}.{name}"
    return (module == "sympy" and (name in _SYMPY_ALGEBRA or q in _NUMERIC_PREFIXES)
            or q in _ENUM_CALLS or q in _CHECK_CALLS or _under(q, _NUMERIC_PREFIXES)
            or _under(module, _SIM_PREFIXES) or module in ("math", "cmath"))


def _compares_outside_filters(node: ast.AST) -> bool:
    """A comparison in `node`, not counting comprehension `if` filters (those select, they do not check)."""
    if isinstance(node, ast.Compare):
        return True
    if isinstance(node, _COMPREHENSIONS):
        parts = [node.elt] if not isinstance(node, ast.DictComp) else [node.key, node.value]
        parts += [g.iter for g in node.generators]
        return any(_compares_outside_filters(p) for p in parts)
    return any(_compares_outside_filters(c) for c in ast.iter_child_nodes(node))


def _outside_loops(tree: ast.AST):
    """Nodes not inside a loop or a comprehension (the loop nodes themselves are skipped too)."""
    stack = list(ast.iter_child_nodes(tree))
    while stack:
        n = stack.pop()
        if isinstance(n, _LOOPS + _COMPREHENSIONS):
            continue
        yield n
        stack.extend(ast.iter_child_nodes(n))


def _is_equality(test: ast.AST) -> bool:
    return isinstance(test, ast.Compare) and any(isinstance(op, (ast.Eq, ast.NotEq)) for op in test.ops)


def _is_small(e: ast.AST) -> bool:
    return isinstance(e, ast.Constant) and isinstance(e.value, float) and 0 < e.value <= _TOLERANCE
