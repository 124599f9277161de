"""Evaluation and calibration data read from a configurable data root (never copied)."""
