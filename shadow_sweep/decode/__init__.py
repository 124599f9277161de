"""Latency path: a decode loop that never computes skipped heads and neurons."""
