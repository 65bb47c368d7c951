"""The tools every `PythonToolPool` offers unless told otherwise.

Each tool is a plain function with keyword parameters, type hints and a one-line summary as the
first docstring line (what a ReAct prompt shows the model). They run in the pool's worker
processes, so they may block or fail: the pool turns an exception into an error result.
"""

from __future__ import annotations

import ast
import math
import operator
import time
from collections.abc import Callable, Mapping
from types import MappingProxyType

BUILTIN_TOOLS: Mapping[str, str] = MappingProxyType(
    {
        "calculator": "hermesflow.backends.builtin_tools:calculator",
        "sleep": "hermesflow.backends.builtin_tools:sleep",
        "word_count": "hermesflow.backends.builtin_tools:word_count",
    }
)
"""Tool name → `module:function`: the default `tools` option of `PythonToolPool`."""

MAX_EXPRESSION_CHARS = 1000
"""Longer expressions are refused: the evaluator recurses once per operator."""

MAX_SLEEP_S = 600.0
"""The longest a `ToolCall` may wait (`ToolCall.timeout_s` is at most 600 s)."""

_BINARY: Mapping[type[ast.operator], Callable[[float, float], float]] = MappingProxyType(
    {
        ast.Add: operator.add,
        ast.Sub: operator.sub,
        ast.Mult: operator.mul,
        ast.Div: operator.truediv,
        ast.FloorDiv: operator.floordiv,
        ast.Mod: operator.mod,
        ast.Pow: operator.pow,
    }
)
_UNARY: Mapping[type[ast.unaryop], Callable[[float], float]] = MappingProxyType(
    {ast.USub: operator.neg, ast.UAdd: operator.pos}
)
_FUNCTIONS: Mapping[str, Callable[..., float]] = MappingProxyType(
    {
        "sqrt": math.sqrt,
        "exp": math.exp,
        "log": math.log,
        "log2": math.log2,
        "log10": math.log10,
        "sin": math.sin,
        "cos": math.cos,
        "tan": math.tan,
        "asin": math.asin,
        "acos": math.acos,
        "atan": math.atan,
        "abs": abs,
        "floor": math.floor,
        "ceil": math.ceil,
    }
)
_CONSTANTS: Mapping[str, float] = MappingProxyType({"pi": math.pi, "e": math.e, "tau": math.tau})
_GRAMMAR = (
    "numbers, + - * / // % **, parentheses, the constants "
    f"{', '.join(_CONSTANTS)} and the functions {', '.join(_FUNCTIONS)}"
)


def calculator(expression: str) -> float:
    """Evaluate an arithmetic expression, e.g. "sqrt(2) * (3 + 4) ** 2"; returns a number.

    The expression is parsed with `ast` and only arithmetic nodes are evaluated — no names
    beyond a few constants, no attributes, no calls beyond a few `math` functions — so it is
    safe on text written by a model. Arithmetic is in floating point: an exponent too large
    for a float raises OverflowError instead of building a huge integer, and a result that is
    not finite (inf, nan) is refused, since it is not valid JSON.
    """
    if not isinstance(expression, str):
        raise TypeError(f"expression must be a string, not {type(expression).__name__}")
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise ValueError(
            f"expression is {len(expression)} characters; at most {MAX_EXPRESSION_CHARS}"
        )
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as error:
        raise ValueError(f"not an arithmetic expression ({error.msg}); use {_GRAMMAR}") from None
    result = _evaluate(tree.body)
    if not math.isfinite(result):
        raise ValueError(f"the result is not a finite number ({result})")
    return result


def _evaluate(node: ast.expr) -> float:
    """Evaluate one node of the allowed grammar (see `calculator`), in floating point."""
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return float(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _evaluate(node.left), _evaluate(node.right)
        result = _BINARY[type(node.op)](left, right)
        if isinstance(result, complex):  # a negative number to a fractional power
            raise ValueError(f"{left} ** {right} is not a real number")
        return _finite(result)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_evaluate(node.operand))
    if isinstance(node, ast.Name) and node.id in _CONSTANTS:
        return _CONSTANTS[node.id]
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in _FUNCTIONS
        and not node.keywords
    ):
        return _finite(float(_FUNCTIONS[node.func.id](*(_evaluate(arg) for arg in node.args))))
    raise ValueError(f"{ast.unparse(node)!r} is not allowed; use {_GRAMMAR}")


def _finite(value: float) -> float:
    """Refuse an overflow to infinity where it happens, not only at the end."""
    if math.isinf(value):
        raise OverflowError("the result is too large for a floating-point number")
    return value


def sleep(seconds: float) -> float:
    """Wait `seconds` and return them (for tests and load generation)."""
    if not 0 <= seconds <= MAX_SLEEP_S:
        raise ValueError(f"seconds must be between 0 and {MAX_SLEEP_S}, not {seconds}")
    time.sleep(seconds)
    return float(seconds)


def word_count(text: str) -> int:
    """Count the whitespace-separated words of `text`."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a string, not {type(text).__name__}")
    return len(text.split())
