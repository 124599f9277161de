"""The Hydra app, stage orchestration and results."""
