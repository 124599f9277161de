"""Model loading, architecture adapters (as data) and per-example head/neuron masks."""
