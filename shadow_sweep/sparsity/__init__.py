"""Sparsity policy: importance scores -> keep masks."""
