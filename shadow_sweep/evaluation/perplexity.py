"""WikiText-2 perplexity as lm-eval's `wikitext` task defines it, under the runtime's masks.

Each document is rolled on its own (`SparseLM.rolling`: lm-eval's windows; stride = window
is exactly lm-eval's `loglikelihood_rolling`, a smaller stride adds overlapping context).
token perplexity = exp(NLL / tokens), word perplexity = exp(NLL / words),
bits per byte = NLL / (bytes * ln 2), with words and bytes of the raw page (lm-eval's rule).
Each window's NLL and token count are kept: the token perplexity's 95% CI resamples documents
(at least MIN_DOCUMENTS_TO_RESAMPLE) or else windows, and says which.
"""

import math
from dataclasses import dataclass, field

from tqdm.auto import tqdm

from shadow_sweep.data.wikitext import WikiDocument
from shadow_sweep.evaluation.lm import SparseLM
from shadow_sweep.statistics import bootstrap_ratio_ci


MIN_DOCUMENTS_TO_RESAMPLE = 10  # fewer documents: the CI resamples windows (blocks of `window` tokens)


@dataclass
class Window:
    document: int  # index of the document in the evaluated list
    nll: float  # nats summed over the window's scored tokens
    tokens: int


@dataclass
class PerplexityResult:
    nll: float  # summed negative log-likelihood in nats
    tokens: int
    words: int
    bytes: int
    windows: list[Window] = field(default_factory=list)

    @property
    def token_perplexity(self) -> float:
        return math.exp(self.nll / self.tokens)

    @property
    def word_perplexity(self) -> float:
        return math.exp(self.nll / self.words)

    @property
    def bits_per_byte(self) -> float:
        return self.nll / (self.bytes * math.log(2))

    @property
    def resampled_unit(self) -> str:
        """What the CI resamples: `documents` when there are enough of them, else `windows`."""
        return resampling_units(self.windows)[0]

    def units(self) -> tuple[list[float], list[int]]:
        """(NLL, tokens) per resampled unit."""
        return resampling_units(self.windows)[1:]

    def token_perplexity_ci(self, seed: int = 0) -> tuple[float, float]:
        """95% CI of the token perplexity: exp of the bootstrap CI of NLL / tokens."""
        low, high = bootstrap_ratio_ci(*self.units(), seed=seed)
        return math.exp(low), math.exp(high)


def resampling_units(windows: list[Window]) -> tuple[str, list[float], list[int]]:
    """(unit, NLL per unit, tokens per unit): the windows summed per document when there are at
    least MIN_DOCUMENTS_TO_RESAMPLE documents (unit `documents`), else the windows themselves."""
    if len({w.document for w in windows}) < MIN_DOCUMENTS_TO_RESAMPLE:
        return "windows", [w.nll for w in windows], [w.tokens for w in windows]
    nll: dict[int, float] = {}
    tokens: dict[int, int] = {}
    for w in windows:
        nll[w.document] = nll.get(w.document, 0.0) + w.nll
        tokens[w.document] = tokens.get(w.document, 0) + w.tokens
    return "documents", list(nll.values()), list(tokens.values())


def wikitext_perplexity(lm: SparseLM, documents: list[WikiDocument], window: int, stride: int,
                        progress: bool = False) -> PerplexityResult:
    if not 1 <= stride <= window:
        raise ValueError(f"perplexity.stride must be in [1, window={window}], got {stride}")
    windows = []
    for index, doc in enumerate(tqdm(documents, desc="perplexity", disable=not progress, leave=False)):
        windows += [Window(index, -score, count) for score, count in lm.rolling(doc.text, window, stride)]
    return PerplexityResult(sum(w.nll for w in windows), sum(w.tokens for w in windows),
                            sum(d.num_words for d in documents), sum(d.num_bytes for d in documents), windows)
