"""Predictors of head and neuron importance: networks, training, quality, and the runtime
that turns their predictions into masks inside each forward pass."""
