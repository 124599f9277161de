"""`hydra/sweeper=skip_finished` (shadow-sweep's default): Hydra's basic sweeper, minus the
points that the sweep's results file already holds as finished.

A relaunch then submits only failed and unfinished points: on SLURM no array task and no
queue wait for finished work. The points it does launch are numbered after the job folders
already in the sweep folder, so no earlier job's folder is overwritten. With
`sweep.skip_finished=false` every point runs again. Same fields as the basic sweeper
(`params`, `max_batch_size`).
"""

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper, BasicSweeperConf
from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher

from shadow_sweep.sweep.relaunch import next_job_number, unfinished_points

log = logging.getLogger(__name__)


@dataclass
class SkipFinishedSweeperConf(BasicSweeperConf):
    _target_: str = "hydra_plugins.shadow_sweep_sweeper.skip_finished_sweeper.SkipFinishedSweeper"


ConfigStore.instance().store(group="hydra/sweeper", name="skip_finished", node=SkipFinishedSweeperConf,
                             provider="shadow-sweep")


class UnfinishedOnly(Launcher):
    """The configured launcher, handed only the points still to run."""

    def __init__(self, inner: Launcher, sweeper: "SkipFinishedSweeper"):
        self.inner, self.sweeper = inner, sweeper

    def setup(self, **kwargs: Any) -> None:
        self.inner.setup(**kwargs)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        config = self.sweeper.config
        sweep_dir = Path(config.hydra.sweep.dir)
        compose = lambda overrides: self.sweeper.hydra_context.config_loader.load_sweep_config(  # noqa: E731
            config, overrides)
        todo = unfinished_points(job_overrides, compose, sweep_dir)
        if len(todo) < len(job_overrides):
            log.info("%d of %d sweep points already finished in %s: not launched again",
                     len(job_overrides) - len(todo), len(job_overrides), sweep_dir)
        if not todo:
            return []
        return self.inner.launch(todo, initial_job_idx=next_job_number(sweep_dir, initial_job_idx))


class SkipFinishedSweeper(BasicSweeper):
    def setup(self, *, hydra_context, task_function, config) -> None:
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
        self.launcher = UnfinishedOnly(self.launcher, self)
