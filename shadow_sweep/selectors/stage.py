"""The statistics stage: calibration statistics (selectors.statistics) of the model on the
calibration examples, cached under the model, the calibration fields that choose the examples
and the data split: computed once per model and calibration set, reused across levels,
selectors and criteria."""

from pathlib import Path

from shadow_sweep.cache import StageCache
from shadow_sweep.config import AppConfig
from shadow_sweep.models.loading import LoadedModel
from shadow_sweep.selectors.statistics import CalibrationStatistics, collect_statistics
from shadow_sweep.traces.stage import calibration_set, trace_key


def statistics_key(cfg: AppConfig) -> dict:
    """The traces' key without the criterion and the per-token sampling (every real token counts)."""
    key = trace_key(cfg)
    key.pop("criterion")
    key["calibration"].pop("positions_per_example")
    return key


def statistics_for(cfg: AppConfig, loaded: LoadedModel, cache: StageCache, progress: bool = True
                   ) -> tuple[CalibrationStatistics, Path]:
    def build(folder: Path) -> None:
        _, encoded = calibration_set(cfg, loaded, cache)
        collect_statistics(loaded, encoded, cfg.calibration.batch_size, progress).save(folder)

    folder = cache.get_or_build("statistics", statistics_key(cfg), build)
    return CalibrationStatistics.load(folder), folder
