"""Hydra callbacks of the app.

`FailedPointsReport`: in a multirun a job that raises records a `failed` job row and lets the
other jobs run (Hydra and SLURM then see it as completed, so neither is relied on); when the
sweep ends, this callback names every point whose latest job row is `failed` and makes the
launching command exit with status 1. Relaunching the same command reruns only those points (and
any that never finished).
"""

from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from shadow_sweep.results import ResultsFile


class FailedPointsReport(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        results = ResultsFile.of_sweep(config.sweep.results_file, config.hydra.sweep.dir)
        failed = results.failed_jobs()
        if failed:
            lines = "\n".join(f"  - {row['job']}: {row.get('error', '')}" for row in failed)
            # SystemExit: Hydra turns a callback's Exception into a warning (exit status 0)
            raise SystemExit(f"{len(failed)} sweep point(s) failed (marked `failed` in {results.path}):\n"
                             f"{lines}\nRelaunch the same command to rerun only these and unfinished points.")
