"""What a relaunched sweep still has to run, and where its job folders go (used by the
`skip_finished` Hydra sweeper, hydra_plugins/shadow_sweep_sweeper)."""

import copy
from pathlib import Path
from typing import Callable, Sequence

from omegaconf import DictConfig, OmegaConf, open_dict

from shadow_sweep.config import AppConfig
from shadow_sweep.results import ResultsFile, job_key


def app_config(job_config: DictConfig) -> AppConfig:
    """The typed app config of one composed Hydra job config (its `hydra` node dropped)."""
    task = copy.deepcopy(job_config)
    with open_dict(task):
        task.pop("hydra", None)
    return OmegaConf.to_object(task)


def unfinished_points(job_overrides: Sequence[Sequence[str]], compose: Callable[[list[str]], DictConfig],
                      sweep_dir: Path) -> list[Sequence[str]]:
    """The points (override lists) without a finished job in their results file; all of them
    for jobs with sweep.skip_finished=false. Each results file is read once."""
    finished: dict[Path, set[str]] = {}
    todo = []
    for overrides in job_overrides:
        app = app_config(compose(list(overrides)))
        results = ResultsFile.of_sweep(app.sweep.results_file, sweep_dir)
        if results.path not in finished:
            finished[results.path] = results.finished_keys()
        if not (app.sweep.skip_finished and job_key(app) in finished[results.path]):
            todo.append(overrides)
    return todo


def next_job_number(sweep_dir: Path, initial: int) -> int:
    """`initial`, or past every numbered job folder already in the sweep folder: a relaunch
    never writes into an earlier job's folder."""
    taken = [int(p.name) for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()] if sweep_dir.is_dir() else []
    return max([initial] + [number + 1 for number in taken])
