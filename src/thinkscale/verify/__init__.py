"""Answer checkers: math equivalence (math-verify, under a time limit) and answer extraction."""

from thinkscale.verify.math import MathChecker, extract_boxed, last_number, math_equal, number_value

__all__ = ["MathChecker", "extract_boxed", "last_number", "math_equal", "number_value"]
