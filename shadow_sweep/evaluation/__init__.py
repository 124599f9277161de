"""Accuracy path: masked dense compute (lm-eval tasks, WikiText-2 perplexity)."""
