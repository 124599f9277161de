"""Rolling-window perplexity against an independent exp(mean NLL) computation."""

import math

import pytest
import torch
import torch.nn.functional as F
from lm_eval.tasks.wikitext.preprocess_wikitext import process_results
from lm_eval.utils import get_rolling_token_windows

from shadow_sweep.data.wikitext import WikiDocument, load_wikitext
from shadow_sweep.evaluation.lm import SparseLM
from shadow_sweep.evaluation.perplexity import PerplexityResult, Window, wikitext_perplexity
from tests.conftest import load_tiny


@pytest.mark.parametrize("window, stride", [(16, 16), (16, 5), (7, 1)])
def test_windows_score_every_token_once(window, stride):
    tokens = list(range(100, 153))
    windows = list(get_rolling_token_windows(tokens, 1, max_seq_len=window, context_len=window - stride + 1))
    assert [t for _, targets in windows for t in targets] == tokens
    assert all(len(inputs) <= window for inputs, _ in windows)


def _independent_nll(loaded, tokens, window, prefix):
    """Disjoint chunks of `window` tokens scored by HF's own shifted cross-entropy: the first
    after the prefix token, every later one after as many preceding tokens as fit in the window
    (one for full chunks, more for the shorter last one), as lm-eval's rolling loglikelihood."""
    total = 0.0
    for start in range(0, len(tokens), window):
        end = min(start + window, len(tokens))
        ids = [prefix] + tokens[:end] if start == 0 else tokens[end - window - 1:end]
        with torch.no_grad():
            out = loaded.model(input_ids=torch.tensor([ids[:-1]]))
        scored = end - start
        total += F.cross_entropy(out.logits[0, -scored:], torch.tensor(ids[-scored:]), reduction="sum").item()
    return total


@pytest.mark.parametrize("batch_size", [1, 3])
def test_perplexity_equals_independent_nll(data_root, session_cache, batch_size):
    loaded = load_tiny("tiny-llama", session_cache)
    doc = WikiDocument(load_wikitext(data_root, 1)[0].page[:700])
    lm = SparseLM(loaded, batch_size=batch_size)
    tokens = lm.tok_encode(doc.text)
    result = wikitext_perplexity(lm, [doc], window=64, stride=64)
    assert result.tokens == len(tokens)
    assert result.nll == pytest.approx(_independent_nll(loaded, tokens, 64, lm.prefix_token_id), rel=1e-5)
    assert result.token_perplexity == pytest.approx(math.exp(result.nll / len(tokens)))
    words = process_results({"page": doc.page}, [0.0])["word_perplexity"][1]  # lm-eval's own count
    assert result.word_perplexity == pytest.approx(math.exp(result.nll / words))


def test_overlapping_windows_need_a_valid_stride(session_cache):
    lm = SparseLM(load_tiny("tiny-opt", session_cache))
    with pytest.raises(ValueError, match="perplexity.stride"):
        wikitext_perplexity(lm, [WikiDocument("a b c")], window=8, stride=9)


def test_windows_hold_the_totals_and_give_the_perplexity_a_ci(data_root, session_cache):
    loaded = load_tiny("tiny-llama", session_cache)
    docs = [WikiDocument(d.page[:700]) for d in load_wikitext(data_root, 2)]
    result = wikitext_perplexity(SparseLM(loaded, 2), docs, window=64, stride=64)
    assert sum(w.tokens for w in result.windows) == result.tokens
    assert sum(w.nll for w in result.windows) == pytest.approx(result.nll)
    assert {w.document for w in result.windows} == {0, 1}
    assert result.resampled_unit == "windows" and len(result.units()[0]) == len(result.windows)
    low, high = result.token_perplexity_ci(seed=0)
    assert low < result.token_perplexity < high


def test_enough_documents_are_resampled_whole():
    windows = [Window(doc, nll=float(doc + 1), tokens=2) for doc in range(12) for _ in range(3)]
    result = PerplexityResult(sum(w.nll for w in windows), 72, 10, 10, windows)
    nll, tokens = result.units()
    assert result.resampled_unit == "documents" and tokens == [6] * 12
    assert nll == [3.0 * (doc + 1) for doc in range(12)]
