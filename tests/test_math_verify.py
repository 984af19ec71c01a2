"""Math answer equivalence: a table of answer pairs, extraction, and the time limit off the main thread."""

from __future__ import annotations

import multiprocessing
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("math_verify")

from thinkscale.verify.math import MathChecker, extract_boxed, last_number, math_equal, number_value  # noqa: E402

EQUIVALENT = [
    ("0.5", r"\frac{1}{2}"), ("1/2", r"\frac{1}{2}"), (r"\dfrac{3}{4}", "0.75"), (r"\tfrac34", "3/4"),
    ("2/4", "1/2"), (r"\frac{1}{3}", r"\dfrac{1}{3}"), ("[1, 2)", "[1,2)"), (r"\left( 1, 2 \right)", "(1,2)"),
    (r"(-\infty,-1)\cup(6,+\infty)", r"(-\infty,-1)\cup(6,\infty)"), (r"\{2,1\}", r"\{1,2\}"),
    (r"\left(3,-1\right)", "(3, -1)"), (r"5\text{ cm}", "5"), (r"5 \text{ inches}", "5"), (r"50\%", "50"),
    ("-3.0", "-3"), (r"-\frac{1}{2}", "-0.5"), (r"2\sqrt{2}", r"\sqrt{8}"), (r"\frac{\sqrt{6}}{4}", r"\sqrt{6}/4"),
    (r"2\sqrt{2}-2", r"2(\sqrt2-1)"), (r"\frac{\sqrt{2}}{2}", r"\frac{1}{\sqrt{2}}"), (r"2\pi", r"\pi \cdot 2"),
    (r"\frac{\pi}{2}", r"\pi/2"), ("1.5e3", "1500"), (r"1.5\times10^{3}", "1500"),
    ("6.02e23", r"6.02\times 10^{23}"), ("10^{10}", "10000000000"), ("1,000", "1000"), (r"\$18", "18"),
    ("18.00", "18"), ("x=3", "3"), ("x^2+2x+1", "(x+1)^2"), (r"$\frac{3}{4}$", "0.75"), (r"90^\circ", "90"),
]
DIFFERENT = [
    ("(1,2)", "[1,2)"), ("[1,2]", "[1,2)"), ("3", "-3"), (r"-\frac{1}{2}", r"\frac{1}{2}"), ("3/4", "4/3"),
    ("0.51", "0.5"), (r"\frac{1}{3}", "0.33"), (r"\sqrt{3}", r"\sqrt{2}"), (r"2\sqrt{2}", "2.83"),
    (r"\pi", "3.14"), ("1.5e3", "150"), ("10^{9}", "10^{10}"), (r"\{1,2\}", r"\{1,2,3\}"), ("x+1", "x-1"),
    ("5", "6"), ("1001", "1000"), (r"50\%", "5"), (r"(-\infty,-1)\cup(6,\infty)", r"(-\infty,-1]\cup(6,\infty)"),
    (r"\frac{\sqrt{6}}{4}", r"\frac{\sqrt{6}}{2}"), (r"5\text{ cm}", "6"), ("", "5"),
]
# sympy tries to evaluate this tower and does not come back for minutes.
HANGS = r"9^{9^{9^{9}}}"


@pytest.mark.parametrize(("given", "reference"), EQUIVALENT)
def test_equivalent_answers(given, reference):
    verdict = math_equal(given, reference)
    assert verdict.correct, verdict


@pytest.mark.parametrize(("given", "reference"), DIFFERENT)
def test_different_answers(given, reference):
    verdict = math_equal(given, reference)
    assert not verdict.correct and verdict.reason, verdict


def test_extract_boxed_takes_the_last_balanced_box():
    assert extract_boxed(r"first \boxed{1}, then \boxed{\frac{1}{2}}.") == r"\frac{1}{2}"
    assert extract_boxed(r"\boxed{\{1, 2\}}") == r"\{1, 2\}"
    assert extract_boxed(r"\fbox{x^{2}}") == "x^{2}"
    assert extract_boxed(r"so $\boxed 5$") == "5"
    assert extract_boxed(r"\boxed{1} then \boxed{\frac{1}{2") is None  # the last box was cut off
    assert extract_boxed("no box here: 42") is None


def test_last_number():
    assert last_number("It costs $1,234.50 in total, not 12.") == "12"
    assert last_number("It costs $1,234.50") == "1234.50"
    assert last_number("from -7 down to -12") == "-12"
    assert last_number("no digits") is None
    assert number_value("$1,000.") == 1000 and number_value("x=3") is None


def test_time_limit_from_a_thread_and_a_thread_pool():
    results = []
    thread = threading.Thread(target=lambda: results.append(math_equal(r"\frac{2}{4}", "0.5", timeout_s=30)))
    thread.start()
    thread.join()
    assert results[0].correct
    pairs = [(r"\sqrt{8}", r"2\sqrt{2}"), (r"\pi", "3.14"), ("[0,1)", r"\left[0, 1\right)"), ("7/2", "3.5")]
    with ThreadPoolExecutor(4) as pool:
        verdicts = list(pool.map(lambda p: math_equal(*p, timeout_s=30), pairs))
    assert [v.correct for v in verdicts] == [True, False, True, True]


def test_a_hanging_check_times_out_in_a_thread_and_its_worker_is_replaced():
    checker = MathChecker(max_workers=1)
    try:
        with ThreadPoolExecutor(1) as pool:
            start = time.monotonic()
            verdict = pool.submit(checker.check, HANGS, "1", 1.0).result()
            elapsed = time.monotonic() - start
        assert verdict.correct is False and verdict.reason == "timed out"
        assert elapsed < 10  # 1 s for the check, plus starting the worker
        assert checker.check(r"\frac{1}{2}", "0.5", 30).correct  # a fresh worker took the hung one's place
    finally:
        checker.close()


def test_works_inside_a_daemonic_worker_process():
    # multiprocessing.Pool workers are daemonic and may not start multiprocessing
    # children; the checker's workers are plain subprocesses, so it still works.
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        verdict = pool.apply(math_equal, (r"\frac{3}{6}", "0.5"))
    assert verdict.correct
