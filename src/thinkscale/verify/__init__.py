"""Answer checkers and their Verdict: math equivalence (math-verify, under a time limit), answer extraction,
code against its tests in a sandbox (verify/sandbox.py)."""

from thinkscale.verify.math import MathChecker, extract_boxed, last_number, math_equal, number_value
from thinkscale.verify.verdict import Verdict

__all__ = ["MathChecker", "Verdict", "extract_boxed", "last_number", "math_equal", "number_value"]
