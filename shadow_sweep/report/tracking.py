"""The report's tables and figures in W&B: one run of job type `report` (the comparisons span
the sweep's jobs, so no job's run holds them). Mode: WANDB_MODE, else offline (`wandb sync`
uploads it later)."""

import os
from pathlib import Path

import pandas as pd


def log_report(project: str, folder: Path, table: pd.DataFrame, comparisons: pd.DataFrame,
               figures: list[Path]) -> Path:
    """Log the summary table, the comparison table and the PNGs; returns the run's folder."""
    import wandb

    run = wandb.init(project=project, dir=str(folder), job_type="report", name="report",
                     mode=os.environ.get("WANDB_MODE", "offline"))
    run.log({"summary": wandb.Table(dataframe=table), "comparisons": wandb.Table(dataframe=comparisons),
             **{f"figures/{path.stem}": wandb.Image(str(path)) for path in figures}})
    run.summary["comparisons_made"] = len(comparisons)
    if len(comparisons):
        run.summary["comparisons_resolved"] = int(comparisons["acc_resolved"].fillna(False).astype(bool).sum())
    run.finish()
    return Path(run.dir).parent
