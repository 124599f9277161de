"""The SLURM launcher against a real one-node SLURM (.ci/slurm.sh starts it in CI): a tiny
2x2 sweep plus deliberately failing points, submitted as a job array through
hydra-submitit-launcher, sharing one stage cache."""

import os
import shutil
import subprocess

import pytest

from tests.conftest import REPO
from tests.sweep.test_sweep import assert_cache_is_whole, job_rows, sweep_command


def slurm_is_up() -> bool:
    if not shutil.which("sinfo"):
        return False
    done = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True)
    return done.returncode == 0 and bool({"idle", "mix"} & set(done.stdout.split()))


pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    not os.environ.get("SHADOW_SWEEP_REQUIRE_SLURM") and not slurm_is_up(),
    reason="no SLURM here: `bash .ci/slurm.sh start` and export SLURM_CONF (CI sets SHADOW_SWEEP_REQUIRE_SLURM=1)")]

SLURM = ["hydra/launcher=slurm", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=3",
         "hydra.launcher.timeout_min=10", "hydra.launcher.signal_delay_s=30", "hydra.launcher.array_parallelism=2"]


def test_sweep_on_slurm_shares_the_cache_and_reports_failed_points(tmp_path, data_root):
    assert slurm_is_up(), "SLURM is not running: bash .ci/slurm.sh start; export SLURM_CONF=..."
    sweep_dir = tmp_path / "sweep"
    command = sweep_command(sweep_dir, tmp_path / "cache", data_root, *SLURM, "logger=none", "stages.bench=false",
                            "predictor=shadowllm,static", "sparsity.level=0.3,0.5,1.5")
    first = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert first.returncode == 1, first.stdout[-2000:] + first.stderr[-4000:]
    assert "2 sweep point(s) failed" in first.stderr and first.stderr.count("sparsity.level=1.5") == 2
    jobs = job_rows(sweep_dir)
    ok = [j for j in jobs if j["status"] == "ok"]
    assert len(jobs) == 6 and {(j["job_predictor"], j["job"].split("sparsity.level=")[1].split(",")[0]) for j in ok} == {
        (p, s) for p in ("shadowllm", "static") for s in ("0.3", "0.5")}
    assert sum(not j["traces_cache_hit"] for j in ok) == 1  # four jobs on the array, one trace computation
    assert all(j["torch_threads"] == 1 for j in ok)  # cpus_per_task
    assert {j["status"] for j in jobs if "sparsity.level=1.5" in j["job"]} == {"failed"}
    assert len(list((sweep_dir / ".submitit").rglob("*_log.out"))) == 6  # array tasks really went through sbatch
    again = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert again.returncode == 1 and "2 sweep point(s) failed" in again.stderr
    rerun = job_rows(sweep_dir)[6:]
    assert len(rerun) == 2 and all(j["status"] == "failed" for j in rerun)  # only the failed points ran again
    assert "4 of 6 sweep points already finished" in again.stdout + again.stderr
    assert len(list((sweep_dir / ".submitit").rglob("*_log.out"))) == 8  # and only they were submitted
    assert_cache_is_whole(tmp_path / "cache")
