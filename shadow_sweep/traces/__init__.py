"""Traces: per calibration example, the predictors' inputs and every unit's criterion score."""
