"""thinkscale: scale the compute a language model spends at inference time.

Sample many attempts, verify them, search under a budget, and measure the
result with honest, budget-matched numbers. See DESIGN.md for the layout.
"""

__version__ = "0.1.0"
