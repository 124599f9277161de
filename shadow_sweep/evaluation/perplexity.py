"""WikiText-2 perplexity as lm-eval's `wikitext` task defines it, one mask per window.

Each document is rolled on its own (`SparseLM.rolling`: lm-eval's windows; stride = window
is exactly lm-eval's `loglikelihood_rolling`, a smaller stride adds overlapping context).
token perplexity = exp(NLL / tokens), word perplexity = exp(NLL / words),
bits per byte = NLL / (bytes * ln 2), with words and bytes of the raw page (lm-eval's rule).
"""

import math
from dataclasses import dataclass

from tqdm.auto import tqdm

from shadow_sweep.data.wikitext import WikiDocument
from shadow_sweep.evaluation.lm import SparseLM


@dataclass
class PerplexityResult:
    nll: float  # summed negative log-likelihood in nats
    tokens: int
    words: int
    bytes: int

    @property
    def token_perplexity(self) -> float:
        return math.exp(self.nll / self.tokens)

    @property
    def word_perplexity(self) -> float:
        return math.exp(self.nll / self.words)

    @property
    def bits_per_byte(self) -> float:
        return self.nll / (self.bytes * math.log(2))


def wikitext_perplexity(lm: SparseLM, documents: list[WikiDocument], window: int, stride: int,
                        progress: bool = False) -> PerplexityResult:
    if not 1 <= stride <= window:
        raise ValueError(f"perplexity.stride must be in [1, window={window}], got {stride}")
    nll, tokens = 0.0, 0
    for doc in tqdm(documents, desc="perplexity", disable=not progress, leave=False):
        loglikelihood, count = lm.rolling(doc.text, window, stride)
        nll, tokens = nll - loglikelihood, tokens + count
    return PerplexityResult(nll, tokens, sum(d.num_words for d in documents), sum(d.num_bytes for d in documents))
