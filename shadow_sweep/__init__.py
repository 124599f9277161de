"""shadow-sweep: predictor-based contextual sparsity (ShadowLLM, DejaVu) as Hydra sweeps."""

__version__ = "0.1.0"
