"""The code-purpose classifier on hand-written snippets, one or more per rule and per precedence clash."""

import pytest

from tirl.analysis.code_purpose import PURPOSES, classify_code

CASES = [
    # arithmetic: straight-line computation
    ("print(191 * 683)", "arithmetic"),
    ("a = 12345\nb = 6789\nprint(a * b + 17)", "arithmetic"),
    ("import math\nprint(math.comb(30, 12))", "arithmetic"),
    ("print(pow(7, 222, 1000))", "arithmetic"),
    ("from fractions import Fraction\nprint(Fraction(3, 7) + Fraction(2, 9))", "arithmetic"),
    ("from sympy import factorint\nprint(factorint(360360))", "arithmetic"),  # number theory, not algebra
    ("x = 2.5\nx **= 3\nprint(x)", "arithmetic"),
    # symbolic: computer algebra
    ("from sympy import symbols, solve\nx = symbols('x')\nprint(solve(x**2 - 5*x + 6, x))", "symbolic"),
    ("import sympy as sp\nx = sp.Symbol('x')\nprint(sp.expand((x + 1)**5))", "symbolic"),
    ("from sympy import *\nx, y = symbols('x y')\nprint(factor(x**3 - y**3))", "symbolic"),
    ("import sympy\nn = sympy.Symbol('n')\nfor k in range(3):\n    print(sympy.diff(n**5, n, k))",
     "symbolic"),  # algebra outranks the loop around it
    # enumeration: search over cases
    ("count = 0\nfor a in range(1, 100):\n    for b in range(a, 100):\n        if a * a + b * b == 2025:\n"
     "            count += 1\nprint(count)", "enumeration"),
    ("from itertools import permutations\nprint(len(set(permutations('AABBC'))))", "enumeration"),
    ("print([n for n in range(1, 200) if n % 7 == 3 and n % 11 == 5])", "enumeration"),  # filter, not check
    ("print(sum(range(1, 101)))", "enumeration"),
    ("n = 1\nwhile n * n < 5000:\n    n += 1\nprint(n)", "enumeration"),
    ("def f(n):\n    return 1 if n < 2 else f(n - 1) + f(n - 2)\nprint(f(20))", "enumeration"),
    ("import itertools as it\nprint(sum(1 for _ in it.product(range(3), repeat=4)))", "enumeration"),
    # verification: checking a value
    ("assert 191 * 683 == 130453\nprint('ok')", "verification"),
    ("print(191 * 683 == 130453)", "verification"),
    ("result = 130453\nif result != 191 * 683:\n    print('wrong')", "verification"),
    ("import math\nprint(math.isclose(math.sqrt(2) ** 2, 2))", "verification"),
    ("print(all(n * (n + 1) // 2 == sum(range(n + 1)) for n in range(50)))", "verification"),
    ("from sympy import symbols, simplify\nx = symbols('x')\nprint(simplify((x+1)**2 - x**2 - 2*x - 1) == 0)",
     "verification"),  # checking outranks algebra
    # numeric: numerical methods
    ("from scipy.optimize import brentq\nprint(brentq(lambda x: x**3 - 2*x - 5, 2, 3))", "numeric"),
    ("import numpy as np\nA = np.array([[2, 1], [1, 3]])\nprint(np.linalg.solve(A, [3, 5]))", "numeric"),
    ("from scipy import integrate\nprint(integrate.quad(lambda t: t**2, 0, 1))", "numeric"),
    ("lo, hi = 0.0, 2.0\nwhile hi - lo > 1e-12:\n    mid = (lo + hi) / 2\n    if mid * mid < 2:\n"
     "        lo = mid\n    else:\n        hi = mid\nprint(lo)", "numeric"),  # bisection by hand
    ("tol = 1e-10\nx = 1.0\nfor _ in range(100):\n    nx = x - (x*x - 3) / (2*x)\n"
     "    if abs(nx - x) < tol:\n        break\n    x = nx\nprint(x)", "numeric"),  # Newton by hand
    # simulation: randomness
    ("import random\nhits = sum(random.random()**2 + random.random()**2 < 1 for _ in range(10000))\n"
     "print(4 * hits / 10000)", "simulation"),
    ("import numpy as np\nrng = np.random.default_rng(0)\nprint(rng.integers(1, 7, size=(1000, 2)).sum(1).mean())",
     "simulation"),
    ("from random import randint\nprint(sum(randint(1, 6) for _ in range(100)))", "simulation"),
    # other and invalid
    ("print('hello')", "other"),
    ("print(130453)", "other"),
    ("", "other"),
    ("print(191 * 683", "invalid"),
    ("for i in range(3)\n    print(i)", "invalid"),
    ("x = 1\x00", "invalid"),
]


@pytest.mark.parametrize("code,purpose", CASES, ids=[f"{p}-{i}" for i, (_, p) in enumerate(CASES)])
def test_classify_code(code, purpose):
    assert classify_code(code) == purpose


def test_table_covers_every_purpose_and_is_large_enough():
    assert {p for _, p in CASES} == set(PURPOSES)
    assert len(CASES) >= 25


def test_code_is_never_executed(tmp_path):
    marker = tmp_path / "ran"
    code = f"open({str(marker)!r}, 'w').write('x')\nprint(1 + 1)"
    assert classify_code(code) == "arithmetic"
    assert not marker.exists()


def _traj(*calls):
    return {"response_ids": [0] * 10, "loss_mask": [1] * 10, "finish_reason": "answer",
            "tool_calls": [{"code": c, "status": s, "output": "", "duration_s": 0.0, "span": [i, i + 1]}
                           for i, (c, s) in enumerate(calls)]}


def test_tool_metrics_purpose_shares_count_executed_calls_only():
    from tirl.analysis.tool_stats import tool_metrics

    m = tool_metrics([
        _traj(("print(2 * 3)", "ok"), ("print(2 *", "error")),
        _traj(("", "empty"), ("for i in range(3): print(i)", "capped")),  # neither was run
        _traj(("import random\nprint(random.random())", "ok"), ("print(6 == 2 * 3)", "ok")),
    ])
    assert m["purpose/arithmetic"] == 0.25
    assert m["purpose/invalid"] == 0.25
    assert m["purpose/simulation"] == 0.25
    assert m["purpose/verification"] == 0.25
    assert m["purpose/enumeration"] == 0.0
    assert sum(m[f"purpose/{p}"] for p in PURPOSES) == 1.0
    assert m["tool/executed_calls"] == 4.0  # the existing keys are unchanged


def test_tool_metrics_purpose_shares_are_nan_when_nothing_ran():
    from tirl.analysis.tool_stats import tool_metrics

    m = tool_metrics([_traj(), _traj(("", "empty"))])
    assert all(m[f"purpose/{p}"] != m[f"purpose/{p}"] for p in PURPOSES)
