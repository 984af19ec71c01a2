"""pass@k, majority@k, coverage-law fits and plots over graded samples."""

from thinkscale.analysis.passk import majority_at_k, mean_pass_at_k, pass_at_k
from thinkscale.analysis.plot import plot_curves
from thinkscale.analysis.scaling import CoverageFit, fit_coverage_law, fit_with_interval

__all__ = [
    "CoverageFit",
    "fit_coverage_law",
    "fit_with_interval",
    "majority_at_k",
    "mean_pass_at_k",
    "pass_at_k",
    "plot_curves",
]
