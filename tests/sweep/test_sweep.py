"""Multirun sweeps end to end on a tiny model, as a user launches them: cache hits across
jobs, one results file, offline W&B runs read back, relaunch and SIGKILL recovery, parallel
jobs sharing one trace, the report and the analysis notebook."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shadow_sweep.cache import MANIFEST
from shadow_sweep.results import ResultsFile
from tests.conftest import REPO
from tests.sweep.wandb_records import read_run

pytestmark = pytest.mark.slow

TINY_JOB = ["model=tiny-llama", "calibration.examples_per_task=2", "calibration.max_length=64", "eval.tasks=[copa]",
            "eval.limit=4", "perplexity.max_documents=1", "perplexity.window=64", "predictor.epochs=2",
            "bench.prompt_length=8", "bench.new_tokens=3", "bench.repeats=1", "bench.warmup=0", "bench.kernel=eager"]
GRID = ["criterion=plainact,l2_norm", "predictor=shadowllm,dejavu", "sparsity.level=0.3,0.5"]


def sweep_command(sweep_dir: Path, cache: Path, data_root: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "shadow_sweep", "-m", *TINY_JOB, *overrides, f"hydra.sweep.dir={sweep_dir}",
            f"paths.cache_dir={cache}", f"paths.data_root={data_root}"]


def run(command: list[str], timeout: int = 900) -> subprocess.CompletedProcess:
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "WANDB_MODE": "offline"})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done


def job_rows(sweep_dir: Path) -> list[dict]:
    return [r for r in ResultsFile(sweep_dir / "results.jsonl").rows() if r["stage"] == "job"]


def assert_cache_is_whole(cache: Path) -> None:
    """Every entry complete (manifest present), no temporary folder left behind."""
    entries = [p for stage in cache.iterdir() if stage.is_dir() and stage.name != "extensions"
               for p in stage.iterdir() if p.is_dir()]
    assert entries and not [p for p in entries if p.name.startswith(".tmp-")]
    assert all((p / MANIFEST).is_file() for p in entries)


@pytest.fixture(scope="module")
def grid_sweep(tmp_path_factory, data_root):
    """2 criteria x 2 predictors x 2 levels, with the default W&B logger (offline)."""
    root = tmp_path_factory.mktemp("grid")
    sweep_dir, cache = root / "sweep", root / "cache"
    started = time.perf_counter()
    run(sweep_command(sweep_dir, cache, data_root, *GRID))
    return sweep_dir, cache, time.perf_counter() - started


def test_grid_sweep_computes_each_stage_once_and_records_every_point(grid_sweep):
    sweep_dir, cache, _ = grid_sweep
    rows = ResultsFile(sweep_dir / "results.jsonl").rows()
    jobs = job_rows(sweep_dir)
    assert len(jobs) == 8 and all(j["status"] == "ok" for j in jobs)
    assert sum(not j["traces_cache_hit"] for j in jobs) == 2  # one trace set per criterion
    assert sum(not j["predictor_cache_hit"] for j in jobs) == 4  # one fit per criterion x predictor
    evaluated = [r for r in rows if r["stage"] == "evaluate"]
    learned = [r for r in evaluated if r["predictor"] not in ("dense", "teal")]
    assert {(r["criterion"], r["predictor"], r["sparsity"]) for r in learned} == {
        (c, p, s) for c in ("plainact", "l2_norm") for p in ("shadowllm", "dejavu") for s in (0.3, 0.5)}
    dense = [r for r in evaluated if r["predictor"] == "dense"]
    assert len(dense) == 8 and sum(not r["cache_hit"] for r in dense) == 1  # the baseline is measured once
    teal = [r for r in evaluated if r["predictor"] == "teal"]  # eval=quick's baseline: once per level
    assert len(teal) == 8 and sum(not r["cache_hit"] for r in teal) == 2 and not any(r["uses_criterion"] for r in teal)
    assert sum(not j.get("statistics_cache_hit", True) for j in jobs) == 1  # its statistics: once per sweep
    assert len({r["word_perplexity"] for r in dense}) == 1
    bench = [r for r in rows if r["stage"] == "bench"]
    # the bench times each job's own update policy (per_token by default), its selection and TEAL
    assert {(r["predictor"], r["update"]) for r in bench} == {("dense", "dense"), ("shadowllm", "per_token"),
                                                             ("dejavu", "per_token"), ("teal", "per_token")}
    assert all(r["job_key"] in {j["job_key"] for j in jobs} for r in rows)
    assert_cache_is_whole(cache)


def test_offline_wandb_runs_hold_the_logged_metrics(grid_sweep):
    sweep_dir, _, _ = grid_sweep
    rows = ResultsFile(sweep_dir / "results.jsonl").rows()
    folders = sorted(sweep_dir.glob("*/wandb/offline-run-*"))
    assert len(folders) == 8
    for folder in folders:
        run = read_run(folder)
        job = json.loads((folder.parents[1] / "summary.json").read_text())
        predictor, criterion = job["job_predictor"], job["criterion"]
        assert run["run"].run_group == f"tiny-llama-{criterion}" and run["run"].job_type == predictor
        assert predictor in run["run"].tags and any(t.startswith("sweep:") for t in run["run"].tags)
        assert run["metrics"]["*"] == "sparsity"
        points = [r for r in rows if r["job_key"] == job["job_key"] and r["stage"] == "evaluate"]
        for row in points:
            prefix = "baseline/teal/" if row["predictor"] == "teal" else ""  # another selection than the job's
            key = f"{prefix}acc_mean@{row['predictor']}:{row['sparsity']}"
            assert run["summary"][key] == pytest.approx(row["acc_mean"])
            assert run["summary"][f"{prefix}word_perplexity@{row['predictor']}:{row['sparsity']}"] == \
                pytest.approx(row["word_perplexity"])
        ours = [r for r in points if r["predictor"] != "teal"]
        assert run["summary"]["heads_spearman_mean"] == pytest.approx(job["heads_spearman_mean"])
        assert [h["sparsity"] for h in run["history"] if "acc_mean" in h] == [r["sparsity"] for r in ours]
        assert ("model", f"predictor-tiny-llama-{criterion}-{predictor}") in run["artifacts"]


def test_relaunch_launches_no_finished_job(grid_sweep, data_root):
    sweep_dir, cache, cold_seconds = grid_sweep
    before = (sweep_dir / "results.jsonl").read_text()
    folders = sorted(p.name for p in sweep_dir.iterdir() if p.is_dir())
    started = time.perf_counter()
    done = run(sweep_command(sweep_dir, cache, data_root, *GRID))
    assert "8 of 8 sweep points already finished" in done.stdout + done.stderr
    assert "Launching" not in done.stdout + done.stderr  # the skip_finished sweeper launched nothing
    assert (sweep_dir / "results.jsonl").read_text() == before
    assert sorted(p.name for p in sweep_dir.iterdir() if p.is_dir()) == folders
    assert time.perf_counter() - started < cold_seconds


def test_report_prints_the_table_and_writes_the_curves(grid_sweep, tmp_path):
    sweep_dir, _, _ = grid_sweep
    done = run([sys.executable, "-m", "shadow_sweep", "report", str(sweep_dir), "--out", str(tmp_path)])
    for line in ("shadowllm x plainact", "dejavu x l2_norm", "dense"):
        assert line in done.stdout
    for name in ("accuracy_vs_sparsity", "perplexity_vs_sparsity", "latency_vs_sparsity", "quality_vs_latency"):
        assert (tmp_path / f"{name}.png").stat().st_size > 10_000
    import pandas as pd

    table = pd.read_csv(tmp_path / "report.csv")
    assert len(table) == 11 and {"acc/copa", "acc_mean", "acc_mean_ci95", "token_perplexity_low", "seeds",
                                "ms_per_token/per_token", "neurons_spearman_mean"} <= set(table)
    assert (table["token_perplexity_low"] <= table["token_perplexity"]).all()
    # per criterion, at 0.3 and 0.5: shadowllm, dejavu and teal against each other and each against dense
    comparisons = pd.read_csv(tmp_path / "comparisons.csv")
    assert "24 paired comparisons along predictor" in done.stdout and len(comparisons) == 24
    assert set(comparisons["b"]) == {"dense", "shadowllm", "teal"} and (comparisons["documents"] > 0).all()
    assert (tmp_path / "quality_vs_bytes.png").stat().st_size > 10_000 and "pairs at matched bytes" in done.stdout
    assert (comparisons["acc_low"] <= comparisons["acc_diff"]).all() and (comparisons["ppl_units"] > 0).all()


def test_analysis_notebook_runs_on_the_sweep(grid_sweep, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    sweep_dir, _, _ = grid_sweep
    monkeypatch.setenv("SHADOW_SWEEP_RESULTS", str(sweep_dir))
    notebook = nbformat.read(REPO / "notebooks" / "analysis.ipynb", as_version=4)
    NotebookClient(notebook, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(REPO / "notebooks")}}).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs)
    assert any("shadowllm x plainact" in o.get("data", {}).get("text/plain", "") for o in outputs)


def test_sweep_killed_mid_way_resumes_without_recomputing(tmp_path, data_root):
    sweep_dir, cache = tmp_path / "sweep", tmp_path / "cache"
    command = sweep_command(sweep_dir, cache, data_root, "logger=none", "predictor=shadowllm,dejavu,static",
                            "stages.bench=false")
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    try:
        deadline = time.time() + 600
        while not job_rows(sweep_dir) and time.time() < deadline and process.poll() is None:
            time.sleep(0.2)
        time.sleep(0.5)  # into the second job (the later two jobs, on cached traces, can finish within 2 s)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    finished = job_rows(sweep_dir)
    assert len(finished) in (1, 2), "kill the sweep while a job is running"
    run(command)
    jobs = job_rows(sweep_dir)
    assert len(jobs) == 3 and all(j["status"] == "ok" for j in jobs)
    assert jobs[:len(finished)] == finished  # finished jobs were skipped, not rerun
    assert all(j["traces_cache_hit"] for j in jobs[len(finished):])
    evaluated = [(r["job_key"], r["predictor"], r["sparsity"]) for r in ResultsFile(sweep_dir / "results.jsonl").rows()
                 if r["stage"] == "evaluate"]
    assert len(evaluated) == len(set(evaluated)) == 9  # dense, the job's and TEAL's: no point measured twice
    assert_cache_is_whole(cache)


def test_two_parallel_jobs_compute_a_shared_trace_once(tmp_path, data_root):
    sweep_dir = tmp_path / "sweep"
    run(sweep_command(sweep_dir, tmp_path / "cache", data_root, "logger=none", "predictor=shadowllm,static",
                      "stages.bench=false", "hydra/launcher=local", "hydra.launcher.n_jobs=2"))
    jobs = job_rows(sweep_dir)
    assert len(jobs) == 2 and all(j["status"] == "ok" for j in jobs)
    assert sorted(j["traces_cache_hit"] for j in jobs) == [False, True]
    assert all(j["torch_threads"] == max(1, len(os.sched_getaffinity(0)) // 2) for j in jobs)
    assert_cache_is_whole(tmp_path / "cache")


def test_a_failing_point_is_reported_and_rerun_alone(tmp_path, data_root):
    sweep_dir = tmp_path / "sweep"
    command = sweep_command(sweep_dir, tmp_path / "cache", data_root, "logger=none", "stages.bench=false",
                            "sparsity.level=0.5,1.5")
    for attempt in (1, 2):
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
        assert done.returncode == 1
        assert "1 sweep point(s) failed" in done.stderr and "sparsity.level=1.5" in done.stderr
        jobs = job_rows(sweep_dir)
        assert [j["status"] for j in jobs] == ["ok"] + ["failed"] * attempt  # the good point ran once
        assert "sparsity.level(s)=1.5" in jobs[-1]["error"]
    assert sorted(p.name for p in sweep_dir.iterdir() if p.name.isdigit()) == ["0", "1", "2"]  # no folder reused
