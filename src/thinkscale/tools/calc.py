"""`calc`: an exact in-process evaluator of integer expressions.

    await Calc().run("347*28+1204")   # ToolResult(text="10920", ok=True, ...)

Integers, `+ - * // %`, `**` with a small exponent, unary minus and
parentheses; nothing else parses, so nothing else runs. It costs microseconds
of the caller's CPU, against the milliseconds of a sandboxed process
(tools/python.py): the pair shows what isolation costs.
"""

from __future__ import annotations

import ast
import time

from thinkscale.tools.base import Tool, ToolResult

MAX_EXPONENT = 64
MAX_DIGITS = 1000  # a result longer than this is an error, not a multi-megabyte integer


class CalcError(ValueError):
    pass


_BINARY = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
           ast.FloorDiv: lambda a, b: a // b, ast.Mod: lambda a, b: a % b, ast.Pow: lambda a, b: a ** b}


def evaluate_integer_expression(text: str) -> int:
    """The value of an integer expression; CalcError saying what is wrong with it otherwise."""
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError:
        raise CalcError(f"not an expression: {text.strip()[:60]!r}") from None

    def value(node: ast.AST) -> int:
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return node.value
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            v = value(node.operand)
            return -v if isinstance(node.op, ast.USub) else v
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            a, b = value(node.left), value(node.right)
            if isinstance(node.op, (ast.FloorDiv, ast.Mod)) and b == 0:
                raise CalcError("division by zero")
            if isinstance(node.op, ast.Pow) and not 0 <= b <= MAX_EXPONENT:
                raise CalcError(f"exponent {b} is outside 0..{MAX_EXPONENT}")
            if isinstance(node.op, ast.Pow) and abs(a).bit_length() * b > MAX_DIGITS * 3.33:
                raise CalcError(f"the result has more than {MAX_DIGITS} digits")
            result = _BINARY[type(node.op)](a, b)
            if abs(result).bit_length() > MAX_DIGITS * 3.33:
                raise CalcError(f"the result has more than {MAX_DIGITS} digits")
            return result
        what = type(node).__name__ if not isinstance(node, ast.Constant) else repr(node.value)
        raise CalcError(f"only integers and + - * // % ** ( ) are allowed, got {what}")

    return value(tree.body)


class Calc(Tool):
    name = "calc"
    description = ("Evaluate an integer expression exactly: + - * // % ** and parentheses. "
                   "Returns the value.")
    argument = "expression"

    async def run(self, argument: str) -> ToolResult:
        cpu, wall = time.thread_time(), time.perf_counter()
        try:
            text, ok = str(evaluate_integer_expression(argument)), True
        except (CalcError, RecursionError, MemoryError) as e:
            text, ok = f"error: {e}" if not isinstance(e, RecursionError) else "error: expression nested too deeply", False
        if ok and len(text) > self.max_output_chars:
            text, ok = f"error: output too long ({len(text)} characters, at most {self.max_output_chars})", False
        return ToolResult(text, ok, time.thread_time() - cpu, time.perf_counter() - wall)

    def worst_cpu_s(self) -> float:
        return 0.01  # bounded: MAX_DIGITS and MAX_EXPONENT keep every operation small
