"""The statistics stage: calibration statistics (selectors.statistics) of the model on the
calibration examples at the positions the traces sample (`sample_positions`: the same tokens
for every criterion and selector), cached under the model, the calibration fields and the data
split: computed once per model and calibration set, reused across levels, selectors and
criteria."""

from pathlib import Path

from shadow_sweep.cache import StageCache
from shadow_sweep.config import AppConfig
from shadow_sweep.models.loading import LoadedModel
from shadow_sweep.selectors.statistics import CalibrationStatistics, collect_statistics
from shadow_sweep.traces.collect import sample_positions
from shadow_sweep.traces.stage import calibration_set, trace_key


def statistics_key(cfg: AppConfig) -> dict:
    """The traces' key without the criterion."""
    key = trace_key(cfg)
    key.pop("criterion")
    return key


def statistics_for(cfg: AppConfig, loaded: LoadedModel, cache: StageCache, progress: bool = True
                   ) -> tuple[CalibrationStatistics, Path]:
    def build(folder: Path) -> None:
        examples, encoded = calibration_set(cfg, loaded, cache)
        count = cfg.calibration.positions_per_example
        positions = [sample_positions(example, len(e.input_ids), count) for example, e in zip(examples, encoded)]
        collect_statistics(loaded, encoded, cfg.calibration.batch_size, positions, progress).save(folder)

    folder = cache.get_or_build("statistics", statistics_key(cfg), build)
    return CalibrationStatistics.load(folder), folder
