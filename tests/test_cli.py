"""The `thinkscale` command end to end, on a handful of problems."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


def thinkscale(*args: str, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "thinkscale.cli", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=600)


@pytest.mark.parametrize("args", [[], ["demo"], ["run"], ["report"], ["compare"], ["export"], ["train"],
                                  ["train", "policy"], ["train", "prm"], ["train", "orm"]])
def test_every_subcommand_has_help(args):
    result = thinkscale(*args, "--help")
    assert result.returncode == 0, result.stderr
    assert "usage: thinkscale" in result.stdout


def test_demo_runs_end_to_end_on_a_few_problems(tmp_path):
    out = tmp_path / "demo"
    result = thinkscale("demo", "--problems", "6", "--samples", "8", "--threads", "1", "--out", str(out))
    assert result.returncode == 0, result.stderr
    for metric in ("pass@k", "majority@k", "coverage law", "k=8", "predicted coverage at k=1024"):
        assert metric in result.stdout
    report = json.loads((out / "report.json").read_text())["repeated_sampling"]
    assert report["ks"] == [1, 2, 4, 8]
    overall = report["groups"]["all"]
    assert overall["problems"] == 6
    assert overall["pass_at_k"] == sorted(overall["pass_at_k"])  # coverage only grows with k
    assert overall["pass_at_k"][-1] > 0  # the shipped model solves something
    assert (out / "coverage-repeated_sampling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # the same table again from the store, and the traces out of it
    again = thinkscale("report", str(out))
    assert again.returncode == 0, again.stderr
    table = lambda text: [l for l in text.splitlines() if "pass@k" in l or "majority@k" in l]  # noqa: E731
    assert table(again.stdout) == table(result.stdout)
    exported = thinkscale("export", str(out), "--format", "jsonl", "--rows", "solution", "--out", str(tmp_path / "s.jsonl"))
    assert exported.returncode == 0, exported.stderr
    rows = [json.loads(line) for line in (tmp_path / "s.jsonl").read_text().splitlines()]
    assert len(rows) == 6 * 8
    assert sum(bool(r["correct"]) for r in rows) / 48 == pytest.approx(overall["pass_at_k"][0], abs=1e-3)

    # started again with the same settings, it finds everything done
    resumed = thinkscale("demo", "--problems", "6", "--samples", "8", "--threads", "1", "--out", str(out))
    assert resumed.returncode == 0 and "6 of 6 traces already done" in resumed.stdout
    changed = thinkscale("demo", "--problems", "6", "--samples", "4", "--threads", "1", "--out", str(out))
    assert changed.returncode == 2 and "strategies[0].settings.n: stored 8, new 4" in changed.stderr


def test_demo_on_countdown_reports_coverage_without_a_vote(tmp_path):
    result = thinkscale("demo", "--task", "countdown", "--problems", "3", "--samples", "4", "--threads", "1",
                        "--out", str(tmp_path / "c"))
    assert result.returncode == 0, result.stderr
    assert "pass@k" in result.stdout and "majority@k is not reported" in result.stdout


def test_bad_input_is_named(tmp_path):
    result = thinkscale("demo", "--task", "countdwn", "--out", str(tmp_path / "x"))
    assert result.returncode == 2 and "Did you mean 'countdown'" in result.stderr
    result = thinkscale("demo", "--checkpoint", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x"))
    assert result.returncode == 2 and "unknown checkpoint" in result.stderr
    (tmp_path / "empty").mkdir()
    result = thinkscale("demo", "--checkpoint", str(tmp_path / "empty"), "--out", str(tmp_path / "x"))
    assert result.returncode == 2 and "missing config.json" in result.stderr
    result = thinkscale("train", "policy", "--task", "arithmetic")
    assert result.returncode != 0 and "--steps" in result.stderr


def test_compare_runs_strategies_and_sets_accuracy_beside_spending(tmp_path):
    config = tmp_path / "cmp.yaml"
    config.write_text(f"""
task: arithmetic
problems: 8
seeds: [0, 1]
output: {tmp_path / "cmp"}
policy: {{options: {{threads: 1}}}}
strategies:
  - {{name: majority_vote, label: vote@4, settings: {{n: 4}}}}
  - {{name: majority_vote, label: vote@16, settings: {{n: 16}}}}
  - name: beam_search
    label: beam@8
    settings: {{n: 8, width: 2}}
    scorer: {{name: confidence}}
""")
    result = thinkscale("compare", str(config))
    assert result.returncode == 0, result.stderr
    assert "intervals: bootstrap over problems" in result.stdout
    data = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert data["problems"] == 8
    rows = data["strategies"]
    assert set(rows) == {"vote@4", "vote@16", "beam@8"}
    for row in rows.values():
        lo, hi = row["interval"]
        assert 0 <= lo <= row["accuracy"] <= hi <= 1
        assert row["generated_tokens"] > 0 and row["flops"] > 0
    assert rows["vote@16"]["generated_tokens"] > 3 * rows["vote@4"]["generated_tokens"]
    assert rows["beam@8"]["scored_tokens"] > 0 and rows["vote@4"]["scored_tokens"] == 0
    assert (tmp_path / "cmp" / "compare.png").read_bytes()[:4] == b"\x89PNG"
    again = thinkscale("compare", str(tmp_path / "cmp"))  # from the finished run directory, no new work
    assert again.returncode == 0, again.stderr
    assert json.loads((tmp_path / "cmp" / "compare.json").read_text()) == data
    missing = thinkscale("compare", str(tmp_path / "nothing.yaml"))
    assert missing.returncode == 2 and "no such experiment file or run directory" in missing.stderr


def test_reusing_labels_made_with_other_settings_is_refused(tmp_path):
    labels = tmp_path / "labels.jsonl"
    labels.write_text('{"problem_id": "p", "prompt": "1+2=\\n", "steps": ["3\\n"], "values": [1.0], "labels": [1]}\n')
    (tmp_path / "labels.jsonl.meta.json").write_text(json.dumps(
        {"kind": "prm", "problems": 1500, "samples": 4, "rollouts": 8, "split": "train", "policy": "arithmetic",
         "seed": 0}))
    result = thinkscale("train", "orm", "--task", "arithmetic", "--labels", str(labels), "--out", str(tmp_path / "m"))
    assert result.returncode == 2
    assert "was made with other settings (kind: 'prm' there, 'orm' asked" in result.stderr
    assert "--relabel" in result.stderr and not (tmp_path / "m").exists()
    # labels from before --completer existed were rolled out by their policy
    other = thinkscale("train", "prm", "--task", "arithmetic", "--labels", str(labels), "--completer", "countdown",
                       "--out", str(tmp_path / "m"))
    assert other.returncode == 2 and "completer: 'arithmetic' there, 'countdown' asked" in other.stderr
