"""Rolling-window perplexity against an independent exp(mean NLL) computation."""

import math

import pytest
import torch
import torch.nn.functional as F

from shadow_sweep.evaluation.perplexity import (PerplexityResult, document_windows, prefix_token_id,
                                                 rolling_windows, window_nll)
from shadow_sweep.data.wikitext import load_wikitext


@pytest.mark.parametrize("window, stride", [(16, 16), (16, 5), (7, 1)])
def test_windows_score_every_token_once_with_full_context(window, stride):
    tokens = list(range(100, 153))
    windows = rolling_windows(tokens, prefix_token=1, window=window, stride=stride)
    assert [t for w in windows for t in w.targets] == tokens
    for w in windows:
        assert len(w.input_ids) <= window
        # the logits of the last len(targets) inputs predict the targets: inputs shifted by one
        assert w.input_ids[len(w.input_ids) - len(w.targets) + 1:] == w.targets[:-1]
    assert all(len(w.input_ids) == window for w in windows[1:])


def _independent_nll(loaded, tokens, window):
    """Disjoint chunks of `window` tokens scored by HF's own shifted cross-entropy: the first
    after the prefix token, every later one after as many preceding tokens as fit in the window
    (one for full chunks, more for the shorter last one), as lm-eval's rolling loglikelihood."""
    prefix = prefix_token_id(loaded.tokenizer)
    total = 0.0
    for start in range(0, len(tokens), window):
        end = min(start + window, len(tokens))
        ids = [prefix] + tokens[:end] if start == 0 else tokens[end - window - 1:end]
        with torch.no_grad():
            out = loaded.model(input_ids=torch.tensor([ids[:-1]]))
        scored = end - start
        total += F.cross_entropy(out.logits[0, -scored:], torch.tensor(ids[-scored:]), reduction="sum").item()
    return total


def test_perplexity_equals_independent_nll(data_root, session_cache):
    from tests.conftest import load_tiny

    loaded = load_tiny("tiny-llama", session_cache)
    docs = load_wikitext(data_root, 1)
    docs = [type(docs[0])(docs[0].page[:700])]
    tokens = loaded.tokenizer(docs[0].text, add_special_tokens=False).input_ids
    windows = document_windows(loaded, docs, window=64, stride=64)
    nll, count = window_nll(loaded, windows, batch_size=3)
    assert count == len(tokens)
    assert nll == pytest.approx(_independent_nll(loaded, tokens, 64), rel=1e-5)
    result = PerplexityResult(nll, count, docs[0].num_words, docs[0].num_bytes)
    assert result.token_perplexity == pytest.approx(math.exp(nll / len(tokens)))
    batch_one, _ = window_nll(loaded, windows, batch_size=1)
    assert batch_one == pytest.approx(nll, rel=1e-5)
