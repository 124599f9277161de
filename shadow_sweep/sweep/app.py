"""`shadow-sweep`: the Hydra app (and `shadow-sweep report <dirs>`, `shadow-sweep cache verify`).

Only Hydra and the config schema load before Hydra parses the command line: `--help`, `--cfg`
and a field's error take about a second; the job's libraries (torch, transformers, lm-eval)
are imported once the config is known good.

A job runs load -> trace -> fit -> evaluate (-> bench) for one config (sweep/job.py). Under
`-m`, every job appends its rows to one results file in the sweep folder, so a relaunch of
the same command skips finished jobs and resumes killed ones.
"""

import logging
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from shadow_sweep.config import AppConfig, ConfigError, UserError, register_configs
from shadow_sweep.sweep.compose import CONF_DIR
from shadow_sweep.sweep.signals import Terminated
from shadow_sweep.results import ResultsError, ResultsFile, job_key
from shadow_sweep.validation import check_fields

log = logging.getLogger(__name__)


def job_threads(cfg: AppConfig, launcher: DictConfig) -> int:
    """sweep.threads, else the SLURM launcher's cpus_per_task, else the cores shared among the
    launcher's parallel jobs (joblib's n_jobs; 1 for Hydra's basic launcher)."""
    if cfg.sweep.threads:
        return cfg.sweep.threads
    if launcher.get("cpus_per_task"):
        return int(launcher.cpus_per_task)
    cores = len(os.sched_getaffinity(0))
    parallel = launcher.get("n_jobs") or 1
    jobs = cores if parallel <= 0 else min(parallel, cores)  # joblib: n_jobs <= 0 means every core
    return max(1, cores // jobs)


def job_name(hydra_cfg: DictConfig, sweep_dir: Path) -> str:
    """The job's values of the swept keys ("criterion=l2_norm,sparsity.level=0.5"), read
    against the sweep's own overrides in multirun.yaml; all its overrides otherwise."""
    task = list(hydra_cfg.overrides.task)
    launched = sweep_dir / "multirun.yaml"
    if hydra_cfg.mode != RunMode.MULTIRUN or not launched.is_file():
        return ",".join(task) or "default"
    sweep, parser = OmegaConf.load(launched).hydra, OverridesParser.create()
    swept = {o.key_or_group for o in parser.parse_overrides(list(sweep.overrides.task))
             if o.is_sweep_override()} | set(sweep.sweeper.get("params") or {})
    chosen = [o.input_line for o in parser.parse_overrides(task) if o.key_or_group in swept]
    return ",".join(chosen or task) or "default"


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def _hydra_entry(cfg: DictConfig) -> None:
    app_cfg: AppConfig = OmegaConf.to_object(cfg)
    hydra_cfg = HydraConfig.get()
    output_dir = Path(hydra_cfg.runtime.output_dir)
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    sweep_dir = Path(hydra_cfg.sweep.dir) if multirun else output_dir
    results = ResultsFile.of_sweep(app_cfg.sweep.results_file, sweep_dir)
    name = job_name(hydra_cfg, sweep_dir)
    try:
        results.check_writable()  # before the job's imports (torch, transformers, lm-eval: seconds)
        if not multirun:
            check_fields(app_cfg)
        import torch  # noqa: PLC0415 (the job's libraries load once the config is known good)

        from shadow_sweep.sweep.job import JobIdentity, run_job  # noqa: PLC0415

        torch.set_num_threads(job_threads(app_cfg, hydra_cfg.launcher))
        run_job(app_cfg, output_dir, results, JobIdentity(f"{sweep_dir.parent.name}/{sweep_dir.name}", name))
    except Terminated:  # the failed row is written; a relaunch reruns this point
        print(f"shadow-sweep: terminated (SIGTERM); point {name} recorded as failed in {results.path}", file=sys.stderr)
        sys.exit(143)
    except ResultsError as error:  # nothing could be recorded: the whole command fails (SystemExit ends a sweep)
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"shadow-sweep: {error}", file=sys.stderr)
        sys.exit(2)
    except UserError as error:  # a value, file, task or model the user gave: one line, no traceback
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        kind = "config error" if isinstance(error, ConfigError) else "error"
        if multirun:
            log.error("sweep point %s: %s: %s (recorded in %s)", name, kind, error, results.path)
            return
        print(f"shadow-sweep: {kind}: {error}", file=sys.stderr)
        sys.exit(2)
    except Exception:
        if not multirun:
            raise
        log.exception("sweep point %s failed (recorded in %s); the sweep goes on", name, results.path)
        return
    _print_summary(app_cfg, results, output_dir)


def _print_summary(cfg: AppConfig, results: ResultsFile, output_dir: Path) -> None:
    """The job's points on one short screen (report.screen), then where the rest is: the full
    table, the results, the report command and the W&B run."""
    import pandas as pd  # noqa: PLC0415

    from shadow_sweep.report.screen import first_screen  # noqa: PLC0415
    from shadow_sweep.report.table import summary_table  # noqa: PLC0415

    table = summary_table(pd.DataFrame(results.job_rows(job_key(cfg))))
    full = output_dir / "summary_table.csv"
    table.to_csv(full, index=False)
    print(first_screen(table, cfg.sparsity.update.value))
    print(f"full table ({len(table.columns)} columns): {_shown(full)}")
    print(f"results: {_shown(results.path)}")
    print(f"report (CIs, comparisons, curves): shadow-sweep report {_shown(results.path)}")
    runs = sorted((output_dir / "wandb").glob("*run-*"))
    if runs:
        print(f"W&B run{' (offline: wandb sync it)' if 'offline' in runs[-1].name else ''}: {_shown(runs[-1])}")
    print(f"log, lm-eval's messages included: {_shown(output_dir / (HydraConfig.get().job.name + '.log'))}")


def _shown(path: Path) -> str:
    """A path as the user would type it: relative to the working folder when under it."""
    path = Path(path).absolute()
    return str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else str(path)


def main() -> None:
    if sys.argv[1:2] == ["report"]:
        from shadow_sweep.report.cli import main as report

        report(sys.argv[2:])
        return
    if sys.argv[1:2] == ["cache"]:
        from shadow_sweep.cache_cli import main as cache

        cache(sys.argv[2:])
        return
    register_configs()
    _hydra_entry()
