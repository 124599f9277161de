"""Rolling-window perplexity; a predictor sets one mask per window (per row of a batch).

Windows are lm-eval's (`get_rolling_token_windows`): the first predicts its whole
length from a prefix token, every later one predicts `stride` new tokens with
`window - stride` tokens of context; stride = window is exactly lm-eval's `wikitext`.
token perplexity = exp(NLL / tokens), word perplexity = exp(NLL / words),
bits per byte = NLL / (bytes * ln 2), as lm-eval defines them (words, bytes of the raw page).
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from lm_eval.utils import get_rolling_token_windows
from tqdm.auto import tqdm

from shadow_sweep.data.wikitext import WikiDocument
from shadow_sweep.models.loading import LoadedModel

@dataclass(frozen=True)
class Window:
    input_ids: list[int]
    targets: list[int]  # the logits of the last len(targets) positions predict these


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


def rolling_windows(tokens: list[int], prefix_token: int, window: int, stride: int) -> list[Window]:
    if not 1 <= stride <= window:
        raise ValueError(f"perplexity.stride must be in [1, window={window}], got {stride}")
    pairs = get_rolling_token_windows(tokens, prefix_token, max_seq_len=window, context_len=window - stride + 1)
    return [Window(list(inputs), list(targets)) for inputs, targets in pairs]


def prefix_token_id(tokenizer) -> int:
    """lm-eval's HFLM rule: BOS when the tokenizer has one, else EOS."""
    return tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id


@torch.no_grad()
def window_nll(loaded: LoadedModel, windows: list[Window], batch_size: int, progress: bool = False
               ) -> tuple[float, int]:
    """Summed NLL of every window's scored tokens, windows right-padded into batches; masks,
    if any, are predicted per window inside each forward (predictors.runtime)."""
    total, count = 0.0, 0
    pad = loaded.tokenizer.pad_token_id
    batches = range(0, len(windows), batch_size)
    for start in tqdm(batches, desc="perplexity", disable=not progress, leave=False):
        chunk = windows[start:start + batch_size]
        length = max(len(w.input_ids) for w in chunk)
        ids = torch.full((len(chunk), length), pad, dtype=torch.long)
        attention = torch.zeros((len(chunk), length), dtype=torch.long)
        for row, w in enumerate(chunk):
            ids[row, :len(w.input_ids)] = torch.tensor(w.input_ids)
            attention[row, :len(w.input_ids)] = 1
        ids, attention = ids.to(loaded.device), attention.to(loaded.device)
        logits = loaded.model(input_ids=ids, attention_mask=attention).logits.float()
        for row, w in enumerate(chunk):
            n, k = len(w.input_ids), len(w.targets)
            targets = torch.tensor(w.targets, device=logits.device)
            total += F.cross_entropy(logits[row, n - k:n], targets, reduction="sum").item()
            count += k
    return total, count


def document_windows(loaded: LoadedModel, documents: list[WikiDocument], window: int, stride: int) -> list[Window]:
    """Each document is rolled on its own, as lm-eval's loglikelihood_rolling does."""
    prefix = prefix_token_id(loaded.tokenizer)
    windows = []
    for doc in documents:
        tokens = loaded.tokenizer(doc.text, add_special_tokens=False).input_ids
        windows.extend(rolling_windows(tokens, prefix, window, stride))
    return windows


def wikitext_perplexity(loaded: LoadedModel, documents: list[WikiDocument], window: int, stride: int,
                        batch_size: int, progress: bool = False) -> PerplexityResult:
    windows = document_windows(loaded, documents, window, stride)
    nll, tokens = window_nll(loaded, windows, batch_size, progress)
    return PerplexityResult(nll, tokens, sum(d.num_words for d in documents), sum(d.num_bytes for d in documents))
