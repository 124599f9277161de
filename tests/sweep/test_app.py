"""The app end to end on a tiny model, and on the embedded default (slow)."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shadow_sweep.sweep.job import run_job
from shadow_sweep.results import missing_fields
from tests.conftest import compose_app, REPO


@pytest.mark.parametrize("predictor", ["shadowllm", "dejavu", "static", "random"])
def test_job_traces_fits_and_writes_a_row_per_level(tmp_path, data_root, predictor):
    cfg = compose_app(["model=tiny-llama", f"paths.data_root={data_root}", f"paths.cache_dir={tmp_path / 'cache'}", "logger=none",
                       "perplexity.max_documents=1", "perplexity.window=128", f"predictor={predictor}",
                       "predictor.epochs=2", "sparsity.levels=[0.3,0.5]", "stages.bench=false", "calibration.examples_per_task=2",
                       "calibration.max_length=64", "eval.tasks=[copa,arc_easy]", "eval.limit=4"])
    table = run_job(cfg, tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["traces_examples"] == 14 and not summary["traces_cache_hit"]
    assert summary["job_predictor"] == predictor and "neurons_spearman_mean" in summary
    rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert rows[-1]["stage"] == "job" and rows[-1]["status"] == "ok" and not rows[-1]["predictor_cache_hit"]
    assert missing_fields(rows[-1], "job", "job+fit") == []  # predictor quality and cost included
    rows = rows[:-1]
    assert all(missing_fields(r, "evaluate", "evaluate+accuracy", "evaluate+perplexity") == [] for r in rows)
    assert [(r["predictor"], r["sparsity"]) for r in rows] == [("dense", 0.0), (predictor, 0.3), (predictor, 0.5),
                                                               ("teal", 0.3), ("teal", 0.5)]  # eval=quick's baseline
    assert list(table["sparsity"]) == [0.0, 0.3, 0.5, 0.3, 0.5]
    assert [r["uses_criterion"] for r in rows] == [False, True, True, False, False]
    assert rows[0]["bytes_fraction"] == 1.0 and all(r["bytes_fraction"] < 1.0 for r in rows[3:])
    assert rows[0]["perplexity_tokens"] == rows[1]["perplexity_tokens"] > 0
    assert rows[0]["token_perplexity"] != rows[2]["token_perplexity"]
    assert all(0 <= r["acc/copa"] <= 1 and "acc_norm/arc_easy" in r and "acc_mean" in r for r in rows)


def test_bench_stage_adds_latency_rows(tmp_path, data_root):
    cfg = compose_app(["model=tiny-llama", f"paths.data_root={data_root}", f"paths.cache_dir={tmp_path / 'cache'}",
                       "stages.accuracy=false", "stages.perplexity=false", "stages.bench=true", "predictor.epochs=1",
                       "calibration.examples_per_task=1", "calibration.max_length=32", "bench.prompt_length=8",
                       "bench.new_tokens=3", "bench.repeats=1", "bench.warmup=0", "bench.kernel=eager",
                       "bench.updates=[per_sequence,per_token]", "sparsity.prefill=dense"])
    run_job(cfg, tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()][:-1]
    assert {(r["stage"], r["predictor"], r["update"]) for r in rows} == {
        ("bench", "dense", "dense"), ("bench", "shadowllm", "per_sequence"), ("bench", "shadowllm", "per_token"),
        ("bench", "teal", "per_token")}  # teal: eval.baseline_selectors (per_token only)
    teal = next(r for r in rows if r["predictor"] == "teal")
    assert (teal["heads_point"], teal["neurons_point"], teal["uses_criterion"]) == ("input", "input", False)
    assert all(r["line_key"] for r in rows if r["path"] == "ours")
    assert all(missing_fields(r, "bench") == [] for r in rows)
    # HF generate's figure is a difference of two timings: on a loaded machine 3 tokens can be < 0
    assert all(r["ms_per_token_min"] <= r["ms_per_token"] <= r["ms_per_token_max"] for r in rows)
    assert all(r["ms_per_token"] > 0 for r in rows if r["path"] == "ours")
    assert {r["prefill"] for r in rows if r["predictor"] == "shadowllm"} == {"dense"}


def test_unavailable_task_fails_before_the_model_loads(tmp_path, data_root, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    cfg = compose_app([f"paths.data_root={data_root}", "model=opt-13b", "eval.tasks=[copa,mmlu]"])
    with pytest.raises(Exception, match="mmlu"):
        run_job(cfg, tmp_path)


def test_missing_data_root_fails_before_the_model_loads(tmp_path):
    cfg = compose_app([f"paths.data_root={tmp_path / 'none'}", "model=opt-13b"])
    with pytest.raises(FileNotFoundError, match="paths.data_root"):
        run_job(cfg, tmp_path)


@pytest.mark.slow
def test_console_command_runs_the_default_job(tmp_path, data_root):
    """`shadow-sweep` as a user types it (slice shortened), from the repository root. The model,
    traces and fit come from the project's cache; a seed of this run's own (zero-shot scores do
    not depend on it) keys new evaluation entries, so that lm-eval runs and logs every time."""
    command = [sys.executable, "-m", "shadow_sweep", f"paths.data_root={data_root}", "perplexity.max_documents=1",
               "calibration.examples_per_task=2", "predictor.epochs=5", "eval.limit=5", "bench.new_tokens=4",
               "bench.repeats=1", f"eval.fewshot_seed={time.time_ns() % 10**9}", f"hydra.run.dir={tmp_path}"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    screen = done.stdout[done.stdout.index(" line "):]  # the first screen: the points, then where the rest is
    assert "shadowllm x plainact" in screen and "ms/token" in screen and "speed-up" in screen
    points = screen.split("full table (")[0].splitlines()  # then where the rest is (paths of this machine)
    assert max(map(len, points)) <= 120 and len(points) == 4 and len(screen.splitlines()) <= 10
    assert "full table (" in screen and (tmp_path / "summary_table.csv").is_file()
    assert "Building contexts" not in done.stdout + done.stderr  # lm-eval's INFO lines: in the log file only
    log_file = REPO / screen.split("log, lm-eval's messages included: ")[1].split()[0]
    assert log_file.parent == tmp_path and "Building contexts" in log_file.read_text()
    rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    dense, sparse, teal = [r for r in rows if r["stage"] == "evaluate"]
    assert dense["model"] == "smollm2-135m" and 5 < dense["token_perplexity"] < 60
    assert sparse["predictor"] == "shadowllm" and sparse["token_perplexity"] > dense["token_perplexity"]
    assert teal["predictor"] == "teal" and dense["token_perplexity"] < teal["token_perplexity"]
    assert 0.5 < teal["bytes_fraction"] < 0.75 and 0.5 < sparse["bytes_fraction"] < 0.8
    assert {"acc/copa", "acc/piqa", "acc/arc_easy"} <= set(dense)
    bench = {(r["predictor"], r["update"]) for r in rows if r["stage"] == "bench"}
    assert bench == {("dense", "dense"), ("shadowllm", "per_token"), ("teal", "per_token")}  # the job's update
    assert "teal" in screen
    assert sparse["update"] == "per_token" and rows[-1]["traces_positions"] > 0
    assert rows[-1]["stage"] == "job" and rows[-1]["status"] == "ok"
    assert done.stderr.count("\r") < 300, "progress bars flood a log that is not a terminal"
    assert "aggregation is not" not in done.stderr
    assert list(tmp_path.glob("wandb/offline-run-*/run-*.wandb"))


def test_a_wandb_failure_never_costs_the_results(tmp_path, data_root, monkeypatch):
    import wandb

    def unreachable(*args, **kwargs):
        raise ConnectionError("W&B is unreachable")

    monkeypatch.setattr(wandb, "init", unreachable)
    cfg = compose_app(["model=tiny-llama", f"paths.data_root={data_root}", f"paths.cache_dir={tmp_path / 'cache'}",
                       "logger=wandb", "stages.accuracy=false", "stages.bench=false", "perplexity.max_documents=1",
                       "perplexity.window=32", "calibration.examples_per_task=1", "calibration.max_length=32",
                       "predictor.epochs=1", "eval.baseline_selectors=[]"])
    with pytest.warns(UserWarning, match="W&B logging disabled.*unreachable"):
        run_job(cfg, tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in rows] == ["evaluate", "evaluate", "job"] and rows[-1]["status"] == "ok"


def test_skip_finished_false_runs_a_finished_job_again(tmp_path, data_root):
    overrides = ["model=tiny-llama", f"paths.data_root={data_root}", f"paths.cache_dir={tmp_path / 'cache'}",
                 "logger=none", "stages.accuracy=false", "stages.bench=false", "perplexity.max_documents=1",
                 "perplexity.window=32", "calibration.examples_per_task=1", "calibration.max_length=32",
                 "predictor.epochs=1", "eval.baseline_selectors=[]"]
    run_job(compose_app(overrides), tmp_path)
    run_job(compose_app(overrides), tmp_path)  # finished: skipped
    run_job(compose_app(overrides + ["sweep.skip_finished=false"]), tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in rows] == ["evaluate", "evaluate", "job"] * 2
    assert [r["cache_hit"] for r in rows if r["stage"] == "evaluate"] == [False, False, True, True]


def test_a_config_error_prints_one_line_and_exits_non_zero(tmp_path):
    """A value the schema allows but the rules reject: one clear line, exit 2, no traceback."""
    command = [sys.executable, "-m", "shadow_sweep", "model=tiny-llama", "logger=none", "sparsity.level=0.5",
               "sparsity.head_level=1.5", f"hydra.run.dir={tmp_path}"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "config error: sparsity.head_level=1.5 is not allowed: expected null or a number in [0, 1)" in done.stderr
