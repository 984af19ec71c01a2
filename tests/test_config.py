"""Experiment configs: valid files load with defaults filled; every mistake names file, line and key."""

from __future__ import annotations

import json
import textwrap

import pytest
import yaml

from thinkscale.budget import Budget
from thinkscale.config import ConfigError, RunConfig, load_config

VALID = """\
task: arithmetic
problems: 12
seeds: [0, 1]
output: {output}
policy:
  options: {{checkpoint_name: arithmetic, threads: 1}}
strategies:
  - name: repeated_sampling
    settings: {{n: 8}}
  - name: majority_vote
    label: mv
    settings:
      n: 8
      temperature: 1
    budget: {{max_generated_tokens: 2000, max_flops: 1e12}}
"""


def write(tmp_path, text: str, name: str = "exp.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def line_of(path, needle: str) -> int:
    """The 1-based line of the first line in the file that contains `needle`."""
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if needle in line)


def error_of(path) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return str(caught.value)


def minimal(**replace: str) -> str:
    """A valid config's lines, with the given top-level keys' lines replaced (value '' drops the key)."""
    lines = {"task": "task: arithmetic", "output": "output: out",
             "strategies": "strategies:\n  - name: repeated_sampling"}
    lines.update(replace)
    return "\n".join(v for v in lines.values() if v) + "\n"


def test_valid_config_loads_with_defaults_filled_and_round_trips(tmp_path):
    path = write(tmp_path, VALID.format(output="runs/arith"))
    config = load_config(path)
    data = config.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["split"] == "test" and data["problems"] == 12 and data["seeds"] == [0, 1]
    assert data["policy"] == {"name": "tiny", "options": {"checkpoint_name": "arithmetic", "threads": 1}}
    first, second = config.strategies
    assert (first.effective_label, second.effective_label) == ("repeated_sampling", "mv")
    assert first.budget.to_budget() == Budget()
    assert second.settings == {"n": 8, "temperature": 1.0} and isinstance(second.settings["temperature"], float)
    assert second.budget.to_budget() == Budget(max_generated_tokens=2000, max_flops=1e12)
    assert data["strategies"][0]["budget"] == {"max_generated_tokens": None, "max_samples": None,
                                               "max_policy_calls": None, "max_flops": None, "max_wall_s": None}
    assert second.build().settings.n == 8

    again = write(tmp_path, yaml.safe_dump(data), name="again.yaml")
    assert load_config(again) == config
    assert RunConfig.from_dict(data) == config


def test_minimal_config_takes_every_default(tmp_path):
    config = load_config(write(tmp_path, minimal()))
    assert (config.split, config.problems, config.seeds, config.policy.name, config.policy.options) == \
        ("test", 200, [0], "tiny", {})
    assert config.strategies[0].settings == {} and config.strategies[0].label is None


def test_loading_never_creates_the_output_directory(tmp_path):
    out = tmp_path / "runs" / "never"
    load_config(write(tmp_path, VALID.format(output=out)))
    with pytest.raises(ConfigError):
        load_config(write(tmp_path, VALID.format(output=out).replace("problems: 12", "problems: -1")))
    assert not out.exists() and not out.parent.exists()


def test_unknown_top_level_key_names_line_and_closest_key(tmp_path):
    path = write(tmp_path, minimal() + "problms: 5\n")
    message = error_of(path)
    assert message.startswith(f"{path}:{line_of(path, 'problms')}: unknown key 'problms'")
    assert "did you mean 'problems'?" in message and "valid keys: output, policy, prices, problem_seed, problems" in message


def test_unknown_key_in_policy(tmp_path):
    path = write(tmp_path, minimal() + "policy:\n  name: tiny\n  option: {threads: 1}\n")
    message = error_of(path)
    assert message.startswith(f"{path}:{line_of(path, 'option:')}: policy: unknown key 'option'")
    assert "did you mean 'options'?" in message


def test_unknown_policy_option_is_checked_against_the_policy_constructor(tmp_path):
    path = write(tmp_path, minimal() + "policy:\n  options:\n    threads: 1\n    max_row: 8\n")
    message = error_of(path)
    assert message.startswith(f"{path}:{line_of(path, 'max_row:')}: policy.options: unknown key 'max_row'")
    assert "did you mean 'max_rows'?" in message and "valid keys: checkpoint_name, cpu_kernel, device, dtype, max_rows, prefix_cache_mb, threads" in message


def test_every_policys_and_scorers_options_are_checked_by_name_and_type(tmp_path):
    path = write(tmp_path, minimal() + "policy:\n  name: openai\n  options:\n    base_url: http://127.0.0.1:9/v1\n"
                                       "    concurency: 8\n")
    message = error_of(path)
    assert message.startswith(f"{path}:{line_of(path, 'concurency:')}: policy.options: unknown key 'concurency'")
    assert "did you mean 'concurrency'?" in message and "flops_per_token" in message
    path = write(tmp_path, minimal() + "policy:\n  name: openai\n  options: {concurrency: 0}\n")
    assert error_of(path).endswith("policy.options.concurrency: must be at least 1, got 0")
    path = write(tmp_path, minimal(strategies="strategies:\n  - name: best_of_n\n    scorer:\n      name: prm\n"
                                             "      options: {checkpoint: arithmetic-prm}"))
    message = error_of(path)
    assert f"{path}:{line_of(path, 'checkpoint:')}: strategies[0].scorer.options: unknown key 'checkpoint'" in message
    assert "did you mean 'checkpoint_name'?" in message


def test_a_dtype_the_tiny_core_does_not_compute_in_is_refused_with_its_line(tmp_path):
    path = write(tmp_path, minimal() + "policy:\n  options:\n    dtype: float16\n")
    assert error_of(path) == (f"{path}:{line_of(path, 'float16')}: policy.options.dtype: expected one of 'float32', "
                              f"'bfloat16', got 'float16'")
    path = write(tmp_path, minimal(strategies="strategies:\n  - name: best_of_n\n    scorer:\n      name: prm\n"
                                             "      options: {dtype: bf16}"))
    assert "strategies[0].scorer.options.dtype: expected one of 'float32', 'bfloat16', got 'bf16'" in error_of(path)


def test_policy_option_of_the_wrong_type(tmp_path):
    path = write(tmp_path, minimal() + "policy:\n  options:\n    threads: four\n")
    assert error_of(path) == f"{path}:{line_of(path, 'four')}: policy.options.threads: expected an integer, got 'four'"


def test_unknown_setting_in_second_strategy_names_its_own_line(tmp_path):
    path = write(tmp_path, """\
        task: arithmetic
        output: out
        strategies:
          - name: repeated_sampling
            settings: {n: 4}
          - name: majority_vote
            settings:
              n: 4
              samples: 8
        """)
    assert error_of(path) == (f"{path}:{line_of(path, 'samples')}: strategies[1].settings: unknown key 'samples'; "
                              f"valid keys: max_tokens, n, stopping, temperature, top_p")


def test_strategy_setting_type_and_value_errors(tmp_path):
    path = write(tmp_path, minimal(strategies="strategies:\n  - name: majority_vote\n    settings:\n"
                                              "      n: lots\n"))
    assert error_of(path) == f"{path}:{line_of(path, 'lots')}: strategies[0].settings.n: expected an integer, got 'lots'"

    path = write(tmp_path, minimal(strategies="strategies:\n  - name: majority_vote\n    settings:\n      n: 0\n"))
    message = error_of(path)
    assert message.startswith(f"{path}:{line_of(path, 'settings:')}: strategies[0].settings: ")
    assert "n must be at least 1" in message


def test_string_for_an_integer(tmp_path):
    path = write(tmp_path, minimal() + "problems: many\n")
    assert error_of(path) == f"{path}:{line_of(path, 'many')}: problems: expected an integer, got 'many'"


def test_bool_is_not_an_integer(tmp_path):
    path = write(tmp_path, minimal() + "seeds: [0, true]\n")
    assert error_of(path) == f"{path}:{line_of(path, 'seeds')}: seeds[1]: expected an integer, got true"


def test_negative_problems(tmp_path):
    path = write(tmp_path, minimal() + "problems: -3\n")
    assert error_of(path) == f"{path}:{line_of(path, '-3')}: problems: must be at least 1, got -3"


def test_budget_limits_are_checked(tmp_path):
    path = write(tmp_path, minimal(strategies="strategies:\n  - name: repeated_sampling\n    budget:\n"
                                              "      max_samples: 0\n"))
    assert error_of(path) == \
        f"{path}:{line_of(path, 'max_samples')}: strategies[0].budget.max_samples: must be at least 1, got 0"


def test_empty_strategies(tmp_path):
    path = write(tmp_path, minimal(strategies="strategies: []"))
    assert error_of(path) == f"{path}:{line_of(path, 'strategies')}: strategies: must not be empty"


def test_missing_required_key(tmp_path):
    path = write(tmp_path, minimal(output=""))
    assert error_of(path) == f"{path}:1: missing required key 'output'"


def test_duplicate_labels(tmp_path):
    path = write(tmp_path, """\
        task: arithmetic
        output: out
        strategies:
          - name: repeated_sampling
            label: rs
          - name: majority_vote
            label: rs
        """)
    lines = path.read_text().splitlines()
    second = len(lines)  # the last line is the second `label: rs`
    message = error_of(path)
    assert message.startswith(f"{path}:{second}: strategies[1].label: label 'rs' is already used by strategies[0] "
                              f"(line 4)")


def test_two_unlabelled_strategies_of_one_name_collide(tmp_path):
    path = write(tmp_path, minimal(strategies="strategies:\n  - name: majority_vote\n  - name: majority_vote\n"))
    assert error_of(path).startswith(f"{path}:5: strategies[1]: label 'majority_vote' is already used")


@pytest.mark.parametrize("key, text, closest", [
    ("task", "task: arithmetc", "arithmetic"),
    ("strategies[0].name", "strategies:\n  - name: majority_vot", "majority_vote"),
    ("policy.name", "policy: {name: tinny}\n", "tiny"),
])
def test_unknown_names_suggest_the_closest(tmp_path, key, text, closest):
    field = key.split(".")[0].split("[")[0]
    path = write(tmp_path, minimal(**{field: text}) if field != "policy" else minimal() + text)
    message = error_of(path)
    assert message.startswith(f"{path}:{line_of(path, text.splitlines()[-1].strip())}: {key}: unknown ")
    assert f"Did you mean {closest!r}" in message


def test_split_must_be_train_or_test(tmp_path):
    path = write(tmp_path, minimal() + "split: dev\n")
    assert error_of(path) == f"{path}:{line_of(path, 'dev')}: split: expected one of 'train', 'test', got 'dev'"
    path = write(tmp_path, minimal() + "split: no\n")
    assert "got false; YAML reads yes/no/on/off as true/false" in error_of(path)


def test_malformed_yaml_reports_the_parsers_line(tmp_path):
    path = write(tmp_path, "task: arithmetic\noutput: out\nstrategies:\n  - name: [repeated_sampling\n")
    message = error_of(path)
    assert message.startswith(f"{path}:5:1: invalid YAML: ")
    path = write(tmp_path, "task: arithmetic\n  output: out\n")
    assert error_of(path).startswith(f"{path}:2:9: invalid YAML: mapping values are not allowed here")


def test_duplicate_key_in_a_mapping(tmp_path):
    path = write(tmp_path, minimal() + "task: countdown\n")
    assert error_of(path) == f"{path}:{line_of(path, 'countdown')}: key 'task' appears twice (first at line 1)"


def test_missing_file(tmp_path):
    path = tmp_path / "nope.yaml"
    assert error_of(path) == f"{path}: no such config file"


def test_top_level_list_and_empty_file(tmp_path):
    path = write(tmp_path, "- task: arithmetic\n")
    assert error_of(path).startswith(f"{path}:1: expected a mapping at the top level")
    path = write(tmp_path, "# nothing here\n")
    assert error_of(path).startswith(f"{path}: the file is empty")


def test_unsafe_tags_are_refused(tmp_path):
    path = write(tmp_path, minimal() + "problems: !!python/object/apply:os.getpid []\n")
    assert error_of(path).startswith(f"{path}:{line_of(path, 'python')}: problems: unsupported YAML tag")
    path = write(tmp_path, minimal() + "split: !!python/name:os.getcwd ''\n")
    assert error_of(path).startswith(f"{path}:{line_of(path, 'python')}:")


def test_the_example_experiments_parse_and_build_with_the_shipped_models():
    from pathlib import Path

    from thinkscale.config import load_config
    from thinkscale.scorers.prm import PRMScorer

    examples = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.yaml"))
    assert examples
    for path in examples:
        if path.name == "improve.yaml":
            continue  # an improve config: tests/test_improve.py
        config = load_config(path)
        for strategy in config.strategies:
            strategy.build()
            if strategy.scorer:
                scorer = strategy.scorer.build(config.task)
                if isinstance(scorer, PRMScorer):
                    scorer.check_task(config.task)  # the shipped reward model of the config's own task
