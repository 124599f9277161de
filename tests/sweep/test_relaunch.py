"""What a relaunch still runs: points without an `ok` job row in their results file (all of
them with sweep.skip_finished=false), numbered after the job folders already there."""

from hydra import compose, initialize_config_dir

from shadow_sweep.config import register_configs
from shadow_sweep.sweep.compose import CONF_DIR
from shadow_sweep.sweep.relaunch import app_config, next_job_number, unfinished_points
from shadow_sweep.results import ResultsFile, job_key
from tests.conftest import compose_app


def test_only_unfinished_points_are_launched_again(tmp_path):
    points = [["sparsity.level=0.3"], ["sparsity.level=0.5"], ["sparsity.level=0.7"],
              ["sparsity.level=0.3", "sweep.skip_finished=false"]]
    results = ResultsFile(tmp_path / "results.jsonl")
    results.append([{"job_key": job_key(compose_app(["sparsity.level=0.3"])), "stage": "job", "status": "ok"},
                    {"job_key": job_key(compose_app(["sparsity.level=0.5"])), "stage": "job", "status": "failed"}])
    register_configs()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        with_hydra = lambda overrides: compose("config", overrides=overrides, return_hydra_config=True)  # noqa: E731
        todo = unfinished_points(points, with_hydra, tmp_path)
        typed = app_config(with_hydra([]))
    assert todo == points[1:]  # 0.3 finished; 0.5 failed; 0.7 never ran; skip_finished=false runs again
    assert typed == compose_app()


def test_relaunched_jobs_get_new_folders(tmp_path):
    assert next_job_number(tmp_path / "missing", 0) == 0
    for name in ("0", "1", "5", ".submitit", "report"):
        (tmp_path / name).mkdir()
    assert next_job_number(tmp_path, 0) == 6 and next_job_number(tmp_path, 9) == 9
