"""Every benchmark under benchmarks/ runs end to end at tiny sizes and prints its headline last.

Each script runs as a subprocess, as a reader runs it, so a refactor that
breaks one cannot pass silently. The sizes are the smallest that still go
through every part of a script; the numbers mean nothing, the form does.
The llama.cpp benchmark needs llama-cpp-python (marker `llamacpp`); the full
search benchmark on a few problems is the slow tier.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
NUMBER = r"\d+(?:\.\d+)?"


def bench(script: str, *args: str, timeout: float = 300) -> list[str]:
    """Run benchmarks/`script` with `args` on one thread; its output lines (stderr shown on failure)."""
    result = subprocess.run([sys.executable, str(BENCHMARKS / script), *args], capture_output=True, text=True,
                            timeout=timeout, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, f"{script} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout.strip().splitlines()


def load(script: str):
    """A benchmark script as a module (its work is inside main(), so importing it runs nothing)."""
    spec = importlib.util.spec_from_file_location(f"benchmark_{Path(script).stem}", BENCHMARKS / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def shipped(name: str) -> bool:
    from thinkscale.tiny.checkpoint import shipped_names

    return name in shipped_names()


def test_every_benchmark_that_draws_problems_takes_a_problem_seed():
    for script in sorted(BENCHMARKS.glob("*.py")):
        source = script.read_text()
        if ".examples(" in source or "def problems(" in source:
            assert '"--problem-seed"' in source, script.name


def test_sampling_benchmark():
    lines = bench("sampling.py", "--prompts", "2", "--samples", "2", "--max-new-tokens", "8", "--max-rows", "8",
                  "--threads", "1", "--device", "cpu", "--problem-seed", "3")
    assert any(line.startswith("baseline: fastest transformers configuration") for line in lines)
    assert re.fullmatch(rf"ratio: {NUMBER}", lines[-1]), lines[-1]


def test_sampling_benchmark_in_bfloat16_says_how_far_it_is_from_float32():
    lines = bench("sampling.py", "--prompts", "2", "--samples", "2", "--max-new-tokens", "8", "--max-rows", "8",
                  "--threads", "1", "--device", "cpu", "--dtype", "bfloat16", "--problem-seed", "3")
    assert any(re.fullmatch(rf"bfloat16 against float32: total variation distance .* mean {NUMBER}, 99th "
                            rf"percentile {NUMBER}, largest {NUMBER}", line) for line in lines)
    assert any(line.startswith("transformers generate, bfloat16, ") for line in lines)  # the baseline tries both
    assert re.fullmatch(rf"ratio: {NUMBER}", lines[-1]), lines[-1]


def test_sampling_benchmark_with_static_decode_draws_the_exact_loops_samples():
    lines = bench("sampling.py", "--prompts", "3", "--samples", "4", "--max-new-tokens", "30", "--max-rows", "8",
                  "--threads", "1", "--device", "cpu", "--static-decode", "on", "--sync-every", "3",
                  "--compare-exact", "--transformers-static-cache", "--repeats", "2", "--problem-seed", "3",
                  "--no-cpu-kernel")  # the torch path's static steps, as a GPU runs them
    name = "thinkscale engine (max_rows 8, float32, static decode, sync every 3, chunked attention): "
    assert any(line.startswith(name)
               and "(median of 2: " in line for line in lines)
    assert "exact loop on cpu: 12 of 12 samples the same tokens as static decode's" in lines
    assert any(line.startswith("transformers generate, float32, static cache, 3 prompt(s) x 4 per call: ")
               for line in lines)
    assert re.fullmatch(rf"ratio: {NUMBER}", lines[-1]), lines[-1]
    engine = bench("sampling.py", "--prompts", "2", "--samples", "2", "--max-new-tokens", "8", "--split", "train",
                   "--engine-only", "--device", "cpu")  # the engine's defaults: on a CPU the C kernel, where it builds
    from thinkscale.tiny import cpu_kernel

    kernel = "C kernel, " if cpu_kernel.available() else ""
    assert engine[-1].startswith(f"thinkscale engine (max_rows 1024, float32, {kernel}exact loop): ")


def test_sampling_benchmark_with_the_cpu_kernel_times_it_against_the_torch_path():
    from thinkscale.tiny import cpu_kernel

    if not cpu_kernel.available():
        pytest.skip(f"no CPU kernel: {cpu_kernel.why_unavailable()}")
    lines = bench("sampling.py", "--prompts", "2", "--samples", "4", "--max-new-tokens", "20", "--max-rows", "8",
                  "--device", "cpu", "--cpu-kernel", "--engine-only", "--problem-seed", "3")
    assert any(line.startswith("thinkscale engine (max_rows 8, float32, C kernel, exact loop): ") for line in lines)
    match = next(re.fullmatch(rf"the same engine, attention in torch: \d+ tokens in {NUMBER} s = [\d,]+ tokens/s; "
                              rf"the C kernel {NUMBER}x; (\d+) of 8 samples the same tokens", line)
                 for line in lines if line.startswith("the same engine"))
    assert int(match.group(1)) >= 6


def test_step_kernels_counts_what_a_static_step_launches():
    lines = bench("step_kernels.py", "--rows", "16")
    pattern = r"chunk by chunk (\d+) kernels, \d+ views; one softmax (\d+) kernels"
    chunked, one_pass = zip(*[map(int, re.search(pattern, line).groups()) for line in lines[1:]])
    for counts in (chunked, one_pass):
        assert len(counts) == 8 and list(counts) == sorted(set(counts))  # each chunk read adds kernels
    assert one_pass[-1] - one_pass[0] < (chunked[-1] - chunked[0]) / 4  # one softmax: few kernels per chunk
    nucleus = bench("step_kernels.py", "--rows", "16", "--top-p")
    assert int(re.search(pattern, nucleus[1]).group(1)) > chunked[0]  # top-p sorts: more kernels


def test_profile_engine_places_a_calls_time():
    lines = bench("profile_engine.py", "--prompts", "2", "--samples", "8", "--max-new-tokens", "20", "--top", "4",
                  "--sync-every", "4", "--one-pass-attention", "on", "--dtype", "float32", "--static-decode", "on",
                  "--max-rows", "16", "--no-cpu-kernel", "--overlap", "on",  # the torch path's static steps, as a GPU's
                  "--width-steps", "4")
    lines = [line for line in lines if not line.startswith("USDT")]  # the profiler's own chatter on some builds
    assert "float32, max_rows 16, static decode, sync every 4, one-pass attention on, kernel by kernel" in lines[0]
    timed = re.fullmatch(rf"one call, not profiled: {NUMBER} s; the static steps' calls {NUMBER} s, outside them "
                         rf"{NUMBER} s = {NUMBER} ms a round \((\d+) rounds of 4 steps, overlapped\)", lines[1])
    steps = re.search(r"static steps: (\d+); by rows: 16 x (\d+); row-steps ([\d,]+), .*\(tokens drawn: ([\d,]+)\)",
                      lines[3])
    assert timed and int(timed[1]) * 4 == int(steps[1])  # the two calls run the same rounds
    assert steps and steps[1] == steps[2] and int(steps[1]) % 4 == 0  # every 4 steps a look: rows stay at 16
    assert int(steps[3].replace(",", "")) >= int(steps[4].replace(",", "")) > 0
    table = lines[lines.index("host ops by their own CPU time (on a GPU, waits for it show as synchronisations and "
                              "copies):") + 1:]
    assert len(table) == 4 and all(re.match(rf"\s+{NUMBER} ms\s+{NUMBER}%\s+[\d,]+ x  aten::", t) for t in table)


def test_profile_engine_lists_the_cpu_kernels_calls_by_name():
    from thinkscale.tiny import cpu_kernel

    if not cpu_kernel.available():
        pytest.skip(f"no CPU kernel: {cpu_kernel.why_unavailable()}")
    lines = bench("profile_engine.py", "--prompts", "2", "--samples", "8", "--max-new-tokens", "20", "--top", "40",
                  "--dtype", "bfloat16", "--cpu-kernel", "--split", "train")
    lines = [line for line in lines if not line.startswith("USDT")]
    assert lines[0].endswith("bfloat16, max_rows 1024, C kernel, exact loop")  # as benchmarks/sampling.py on a CPU
    assert not any(line.startswith("static steps") for line in lines)
    calls = {m[2]: int(m[1].replace(",", "")) for line in lines
             if (m := re.fullmatch(rf"\s+{NUMBER} ms\s+{NUMBER}%\s+([\d,]+) x  (cpu_kernel\.\w+)", line))}
    layers = 4  # the arithmetic checkpoint's: a call of each layer a step; add_rms once more a layer, and at the end
    assert set(calls) == {"cpu_kernel.run", "cpu_kernel.add_rms", "cpu_kernel.silu_mul", "cpu_kernel.prepare"}
    steps = calls["cpu_kernel.prepare"]
    assert steps > 0 and calls["cpu_kernel.run"] == calls["cpu_kernel.silu_mul"] == layers * steps
    assert calls["cpu_kernel.add_rms"] == (2 * layers + 1) * steps


def test_profile_kernel_times_a_row_from_each_level():
    from thinkscale.tiny import cpu_kernel

    if not cpu_kernel.available():
        pytest.skip(f"no CPU kernel: {cpu_kernel.why_unavailable()}")
    lines = bench("profile_kernel.py", "--rows", "128", "--layers", "2", "--seconds", "0.2", "--own", "10")
    assert lines[0].startswith("cpu_kernel.run, bfloat16, 4 heads of 32, 1 thread(s); each row reads 16 prompt")
    rows = [re.fullmatch(rf"\s+(L2|L3|memory)\s+(\d+) rows: ({NUMBER}) us a row", line) for line in lines[1:4]]
    assert [(m[1], m[2]) for m in rows] == [("L2", "64"), ("L3", "128"), ("memory", "128")]
    assert all(float(m[3]) > 0 for m in rows)
    assert re.fullmatch(rf"from memory, a row takes {NUMBER}x what it takes in L2", lines[-1])


def test_attention_products_time_both_ways_and_agree():
    lines = bench("attention_products.py", "--rows", "16", "--device", "cpu")
    assert lines[0] == "device cpu" and len(lines) == 3
    for line, dtype, bound in ((lines[1], "bfloat16", 0.02), (lines[2], "float32", 1e-5)):
        assert line.startswith(f"{dtype}, 16 rows: scores matmul ")
        gaps = re.search(r"scores (\S+), values (\S+)$", line)
        assert all(float(gap) < bound for gap in gaps.groups()), line


def test_adaptive_benchmark():
    lines = bench("adaptive.py", "--problems", "3", "--dev-problems", "3", "--n", "4", "--particles", "2",
                  "--problem-seed", "2")
    assert any(line.startswith("  chosen on dev: confidence") for line in lines)
    assert any(line.startswith("  particle_filtering@2: accuracy") for line in lines)
    assert re.fullmatch(rf"samples saved: {NUMBER}x at [+-]{NUMBER} pt", lines[-1]), lines[-1]


def test_forecast_benchmark():
    lines = bench("forecast.py", "--problems", "3", "--samples", "8", "--fit-samples", "2", "--problem-seed", "1")
    assert any(line.startswith("pass@8: measured") for line in lines)
    assert re.fullmatch(rf"forecast error at k=8: beta {NUMBER} pt, power law {NUMBER} pt", lines[-1]), lines[-1]


def test_store_benchmark():
    lines = bench("store.py", "--nodes", "1000", "--samples", "4", "--problem-seed", "1")
    assert any(line.startswith("report pass peak memory: ") for line in lines)
    assert re.fullmatch(r"thinkscale store: \d+ nodes/s", lines[-1]), lines[-1]


def test_search_benchmark_on_dev_problems_with_the_base_policy():
    lines = bench("search.py", "--tasks", "arithmetic", "--problems", "4", "--budgets", "64", "--threads", "1",
                  "--only", "prm-weighted", "--base-pool", "64", "--split", "dev", "--problem-seed", "5")
    out = "\n".join(lines)
    assert "4 dev problems (train split, seed 1005; none of the 1500 problems" in out
    assert "prm-weighted_best_of_n@64" in out and "prm-beam@64" not in out
    if shipped("arithmetic-base"):
        assert "base policy arithmetic-base:" in out and "(the same: " in out  # FLOPs a token match
        assert "base-prm-weighted_best_of_n@64" in out and "at equal FLOPs:" in out
        assert re.search(rf"arithmetic-base as the policy at N = 64: pass@64 {NUMBER}, majority@64 {NUMBER}", out)
    assert re.fullmatch(rf"gap closed: (-?{NUMBER}|nan \(pass@64 = majority@64: no gap to close\))", lines[-1]), \
        lines[-1]


def kernel_default() -> str:
    """What search.py's summary line says of the C kernel when not told: its engines' default, where it builds."""
    from thinkscale.tiny import cpu_kernel

    return ", C kernel" if cpu_kernel.available() else ""


def test_search_benchmark_in_bfloat16_loads_every_model_in_it():
    lines = bench("search.py", "--tasks", "arithmetic", "--problems", "2", "--budgets", "4", "--threads", "1",
                  "--only", "prm-best_of_n", "--base-policy", "none", "--dtype", "bfloat16")
    assert re.match(r"arithmetic: \d+ s in all, 1 worker of 1 torch thread \(rows run in 0 other processes\), "
                    rf"bfloat16{kernel_default()}; ", lines[-1]), lines[-1]
    search = load("search.py")  # what a worker loads: every policy and reward model in bfloat16
    search.load_models("arithmetic", [], {"policy": "arithmetic"}, {"prm": "arithmetic-prm", "orm": "arithmetic-orm"},
                       1, 64, 0, "bfloat16")
    assert {str(m.engine.dtype) for m in (*search.LOADED["policies"].values(), *search.LOADED["scorers"].values())} \
        == {"torch.bfloat16"}


@pytest.mark.parametrize("flag", ["--cpu-kernel", "--no-cpu-kernel"])
def test_search_benchmarks_kernel_flag_sets_every_models_attention(monkeypatch, flag):
    from thinkscale.tiny import cpu_kernel

    kernel = flag == "--cpu-kernel"
    if kernel and not cpu_kernel.available():
        pytest.skip(f"no CPU kernel: {cpu_kernel.why_unavailable()}")
    lines = bench("search.py", "--tasks", "arithmetic", "--problems", "2", "--budgets", "4", "--threads", "1",
                  "--only", "prm-best_of_n", "--base-policy", "none", flag, "--workers", "2")
    assert re.match(r"arithmetic: \d+ s in all, 2 workers of 1 torch thread \(rows run in [12] other process(es)?\), "
                    rf"float32{', C kernel' if kernel else ''}; ", lines[-1]), lines[-1]
    search = load("search.py")  # what a worker loads, where the flag has set the variable (1 or 0)
    monkeypatch.setenv("THINKSCALE_CPU_KERNEL", str(int(kernel)))
    search.load_models("arithmetic", [], {"policy": "arithmetic"}, {"prm": "arithmetic-prm", "orm": "arithmetic-orm"},
                       1, 64, 0)
    assert {m.engine._fused() for m in (*search.LOADED["policies"].values(), *search.LOADED["scorers"].values())} \
        == {kernel}


def test_search_benchmarks_summary_names_a_model_the_kernel_cannot_take(tmp_path):
    """A reward model outside the C kernel's bounds runs the torch path, and the summary line says so."""
    import json

    from thinkscale.tiny.cpu_kernel import MAX_DIM
    from thinkscale.tiny.model import TinyConfig

    search = load("search.py")
    assert search.kernel_note(["arithmetic", "arithmetic-prm", "arithmetic"]) == ", C kernel"
    wide = tmp_path / "wide-prm"
    wide.mkdir()
    heads = 2
    config = TinyConfig(hidden_size=heads * 2 * MAX_DIM, num_attention_heads=heads)  # heads of 2 x MAX_DIM
    (wide / "config.json").write_text(json.dumps(config.to_hf()))
    assert search.kernel_note(["arithmetic", str(wide)]) == f", C kernel ({wide} on the torch path: outside its bounds)"


def test_search_benchmark_rows_in_worker_processes_print_what_one_process_prints():
    args = ("--tasks", "arithmetic", "--problems", "3", "--budgets", "4,16", "--threads", "1", "--base-policy", "none",
            "--only", "prm-(beam|mcts|best_of_n)")
    one, two = bench("search.py", *args), bench("search.py", *args, "--workers", "2")
    assert re.fullmatch(rf"arithmetic: \d+ s in all, 2 workers of 1 torch thread \(rows run in [12] other "
                        rf"process(es)?\), float32{kernel_default()}; peak memory so far {NUMBER} MB here, {NUMBER} MB "
                        rf"the largest "
                        rf"worker",
                        two[-1]), two[-1]
    assert "(rows run in 0 other processes)" in one[-1]

    def results(lines: list[str]) -> list[str]:  # without the seconds each part took
        return [re.sub(r"(: \d+ s| in \d+ s| \d+ s in all.*)$", "", line) for line in lines]

    assert "  prm-mcts@16" in results(one) and results(one) == results(two)


def test_search_dev_problems_are_train_problems_the_reward_models_never_saw():
    from thinkscale.tasks import get_task
    from thinkscale.tasks.base import split_of

    search = load("search.py")
    task = get_task("arithmetic")
    labelled = search.labelled_problems(task, ["arithmetic-prm", "arithmetic-orm"])
    assert labelled == {e.problem.prompt for e in task.examples("train", 1500, seed=0)}
    dev = search.dev_examples(task, 60, 0, labelled)
    prompts = [e.problem.prompt for e in dev]
    assert len(set(prompts)) == 60 and not set(prompts) & labelled
    assert all(split_of(p) == "train" for p in prompts)
    assert [e.problem.difficulty for e in dev] == [task.difficulties[i % len(task.difficulties)] for i in range(60)]
    assert prompts != [e.problem.prompt for e in search.dev_examples(task, 60, 1, labelled)]


def test_verify_code_benchmark():
    lines = bench("verify_code.py", "--problems", "3", "--repeats", "1", "--workers", "1", "--problem-seed", "2")
    assert re.fullmatch(r"agreement: 100% \(canonical 3/3, perturbed 3/3, mutants \d+/\d+\)", lines[-2]), lines[-2]
    assert re.fullmatch(rf"ratio: {NUMBER} \(cold start included; warm {NUMBER}\)", lines[-1]), lines[-1]


def test_verify_code_mutants_are_one_small_mistake_each():
    import ast
    import random

    from thinkscale.tasks import get_task

    verify_code = load("verify_code.py")
    reference = get_task("humaneval").examples("test")[0].reference  # has_close_elements: loops, if, <
    made = verify_code.mutants(reference, 10, random.Random(0))
    operators = {operator for operator, _ in made}
    assert {"boundary", "flip-equality", "flip-order", "drop-if"} <= operators
    canonical = reference.prompt + reference.solution
    for operator, program in made:
        ast.parse(program)
        assert program.startswith(reference.prompt) and program != canonical
    boundary = next(program for operator, program in made if operator == "boundary")
    assert "distance <= threshold" in boundary and "distance < threshold" in canonical


def test_step_labels_benchmark():
    lines = bench("step_labels.py", "--problems", "2", "--samples", "2", "--rollouts", "2", "--threads", "1",
                  "--problem-seed", "4")
    assert re.fullmatch(rf"valid steps labelled failed: policy {NUMBER}, completer {NUMBER}", lines[-1]), lines[-1]


def test_backends_benchmark_reads_a_process_cpu_time():
    backends = load("backends.py")
    before = backends.process_cpu_seconds(os.getpid())
    sum(i * i for i in range(2_000_000))
    assert backends.process_cpu_seconds(os.getpid()) > before
    usage = "\n".join(bench("backends.py", "--help"))  # parses its options without llama.cpp
    assert "--problem-seed" in usage and "`overhead: N.NN`" in usage


@pytest.mark.llamacpp
def test_backends_benchmark():
    pytest.importorskip("llama_cpp", reason="needs llama-cpp-python: pip install -e '.[llamacpp]'")
    pytest.importorskip("gguf", reason="needs gguf: pip install -e '.[llamacpp]'")
    lines = bench("backends.py", "--problems", "2", "--n", "2", "--concurrency", "2", "--problem-seed", "1")
    assert any(line.startswith("concurrency 1: ") and "server CPU" in line for line in lines)
    assert any(line.startswith("baseline: the same run at concurrency 1") for line in lines)
    assert re.fullmatch(rf"overhead: {NUMBER}", lines[-1]), lines[-1]


@pytest.mark.slow
def test_search_benchmark_prints_every_strategy_and_the_gap_line_last():
    lines = bench("search.py", "--problems", "6", "--budgets", "4,64", "--threads", "1", timeout=1800)
    out = "\n".join(lines)
    for label in ("prm-best_of_n@64", "prm-weighted_best_of_n@64", "prm-beam@64", "prm-dvts@64", "prm-mcts@64",
                  "orm-best_of_n@64", "== countdown"):
        assert label in out, label
    if shipped("arithmetic-base"):
        assert "base-prm-best_of_n@64" in out.split("== countdown")[0]
    assert "prm-weighted_best_of_n@4" not in out.split("== countdown")[1]  # countdown has no answer to vote on
    assert lines[-1].startswith("gap closed: ") and float(lines[-1].split(": ")[1]) <= 1.0
    # arithmetic checks its steps: right answers reached by valid steps are a share of pass@64
    row = next(line.split() for line in out.split("== countdown")[0].splitlines() if line.split()[:1] == ["64"])
    _, _, _, cover, valid, vote = row
    assert 0 <= float(valid) <= float(cover) and "valid pass@64" in out
    assert "valid pass@k" not in out.split("== countdown")[1]


def test_flywheel_benchmark_and_its_fresh_draw_measure_what_a_run_on_that_draw_measures(tmp_path):
    small = ["--rounds", "1", "--problems", "4", "--search-problems", "16", "--samples", "4", "--finetune-steps", "3",
             "--batch-size", "8", "--tree-problems", "4", "--refresh-steps", "2", "--eval-samples", "4", "--beam", "4",
             "--quiet", "--out", str(tmp_path)]
    lines = bench("flywheel.py", *small, "--problem-seed", "2", "--fresh-draws", "3")
    assert any(line.startswith("oracle") or " oracle " in line for line in lines)
    assert any(line.startswith("sampling instead of training") for line in lines)
    assert any(line.strip().startswith("fresh draw (problem seed 3): pass@1") for line in lines)
    assert re.fullmatch(rf"pass@1: {NUMBER} -> {NUMBER} in 1 rounds", lines[-1]), lines[-1]
    # the fresh draw is what a whole run on problem seed 3 measures, without training the checkpoints again
    bench("flywheel.py", *small, "--problem-seed", "3")
    drawn = json.loads((tmp_path / "arithmetic-seed2" / "flywheel.json").read_text())["draws"]
    run = json.loads((tmp_path / "arithmetic-seed3" / "flywheel.json").read_text())
    assert [d["problem_seed"] for d in drawn] == [3]
    assert [r["eval"] for r in drawn[0]["rounds"]] == [r["eval"] for r in run["rounds"]]
    assert drawn[0]["oracle"]["eval"] == run["oracle"]["eval"]
    assert evaluated(tmp_path / "arithmetic-seed2" / "flywheel" / "draw-3" / "round-1") == evaluated(
        tmp_path / "arithmetic-seed3" / "flywheel" / "round-1" / "eval") != evaluated(
        tmp_path / "arithmetic-seed2" / "flywheel" / "round-1" / "eval")


def evaluated(run_dir: Path) -> set[str]:
    """The ids of the problems a run directory's traces are of."""
    from thinkscale.store import RunStore

    with RunStore.read(run_dir) as store:
        return {t.problem_id for t in store.iter_traces()}


def test_flywheel_benchmark_with_grpo_and_no_refresh(tmp_path):
    lines = bench("flywheel.py", "--method", "grpo", "--rl-steps", "2", "--rounds", "1", "--problems", "4",
                  "--search-problems", "16", "--finetune-steps", "2", "--batch-size", "8", "--refresh-steps", "0",
                  "--eval-samples", "4", "--beam", "0", "--problem-seed", "2", "--quiet", "--out", str(tmp_path))
    result = json.loads((tmp_path / "arithmetic-seed2" / "flywheel.json").read_text())
    rows = result["rounds"]
    assert "grpo" in rows[1]["flops"] and rows[1]["prm_records"] == 0  # learnt by GRPO; the PRM left as it was
    # the oracle trains on about as many tokens as GRPO's gradient steps did (not `--finetune-steps` a round)
    grpo_tokens = json.loads((Path(rows[1]["policy"]) / "training.json").read_text())["tokens"]
    steps = result["oracle"]["steps"]
    oracle_tokens = json.loads((tmp_path / "arithmetic-seed2" / f"oracle-policy-{steps}" / "training.json"
                                ).read_text())["tokens"]
    assert steps != 2 and 0.8 < oracle_tokens / grpo_tokens < 1.25, (steps, oracle_tokens, grpo_tokens)
    assert (tmp_path / "arithmetic-seed2" / "grpo" / "round-1" / "policy").is_dir()
    assert not (tmp_path / "arithmetic-seed2" / "grpo" / "round-1" / "prm").exists()
    assert re.fullmatch(rf"pass@1: {NUMBER} -> {NUMBER} in 1 rounds", lines[-1]), lines[-1]


def test_sft_variants_benchmark_trains_each_variant_on_a_ledger_and_names_the_best(tmp_path):
    from thinkscale.config import RunConfig
    from thinkscale.runner import execute_run

    search = execute_run(RunConfig.from_dict({
        "task": "arithmetic", "split": "train", "problems": 12, "problem_seed": 3, "seeds": [0],
        "output": str(tmp_path / "search"), "policy": {"name": "tiny", "options": {"threads": 1}},
        "strategies": [{"name": "repeated_sampling", "label": "sample", "settings": {"n": 8}}]}), progress=False)
    out = tmp_path / "variants"
    args = ("--search", str(search), "--task", "arithmetic", "--variants", "sft-2,rpo-2,dups-2", "--dev-problems", "4",
            "--problem-seed", "1", "--out", str(out))
    lines = bench("sft_variants.py", *args)
    table = {line.split()[0]: line.split()[1:] for line in lines if line.split()[:1] in (["sft-2"], ["rpo-2"],
                                                                                           ["dups-2"])}
    assert set(table) == {"sft-2", "rpo-2", "dups-2"} and all(0 <= float(v) <= 1 for row in table.values() for v in row)
    assert json.loads((out / "rpo-2" / "training.json").read_text())["pairs"] > 0  # the DPO term had pairs to learn
    assert re.fullmatch(rf"best: (sft|rpo|dups)-2 pass@1 {NUMBER} against sft-2 {NUMBER}", lines[-1]), lines[-1]
    assert bench("sft_variants.py", *args)[-1] == lines[-1]  # a second run reads the finished variants back


@pytest.mark.trl
def test_grpo_benchmark_against_trl(tmp_path):
    pytest.importorskip("trl", reason="needs trl: run `make test-trl`")
    lines = bench("grpo.py", "--steps", "2", "--prompts", "2", "--group", "2", "--problems", "4", "--eval-samples",
                  "2", "--problem-seed", "1", "--quiet", "--out", str(tmp_path))
    result = json.loads(next(tmp_path.glob("*/grpo.json")).read_text())
    for name in ("trl", "thinkscale"):  # both trained, both rewarded by the verifier each step, both evaluated
        assert len(result[name]["reward"]) == 2 and result[name]["sampled_tokens"] > 0
        assert 0 <= result[name]["eval"]["pass@1"] <= 1
    headline = rf"ratio: thinkscale GRPO {NUMBER}x faster than TRL GRPOTrainer \(seconds a step\)"
    assert re.fullmatch(headline, lines[-1]), lines[-1]


def test_cost_benchmark_tools_part():
    lines = bench("cost.py", "--problems", "6", "--ks", "1,2", "--parts", "tools", "--problem-seed", "1")
    assert any(line.startswith("price table: $0.05/CPU-hour") for line in lines)
    assert any(line.startswith("tool-python against by-hand at equal cost") for line in lines)
    assert re.fullmatch(rf"tools: accuracy at equal cost >?{NUMBER}x \(calc\), >?{NUMBER}x \(python\)", lines[-1]), \
        lines[-1]


@pytest.mark.skipif(not shipped("arithmetic-4x"), reason="the 4x policy is not shipped")
def test_cost_benchmark_models_part():
    lines = bench("cost.py", "--problems", "6", "--dev-problems", "6", "--parts", "models", "--search-ns", "2",
                  "--large-ns", "2", "--problem-seed", "1")
    assert any(line.startswith("Snell at matched FLOPs") for line in lines)
    assert any(line.startswith("Snell at matched dollars") for line in lines)
    assert any(line.startswith("Monkeys:") for line in lines)
    assert re.fullmatch(r"cost per solved problem: small\+search \$\S+ vs large \$\S+", lines[-1]), lines[-1]
