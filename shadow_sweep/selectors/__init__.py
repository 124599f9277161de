"""Selectors: what chooses, per token and layer, which heads, neurons or input channels a point
keeps (docs/selectors.md). One module per selector, registered in `registry.SELECTORS`."""
