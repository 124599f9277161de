"""An lm-eval 0.4 model over a loaded model whose masks are predicted per request.

`SparseLM` is a `TemplateLM`: lm-eval's own code turns requests into (context,
continuation) token pairs exactly as its HFLM does; we score them in batches WITH an attention
mask, so that the predictor (hooked into every forward by `SelectionRuntime`) reads each row's
own tokens, and requests with equal contexts share one forward of it where that is exact
(evaluation.scoring). The runtime's update policy decides
how: per_token, every position its own masks; per_sequence, one mask per request.
`prefill` decides the context: `sparse`, every position masked (per_sequence: the mask chosen
at the last input token, context + continuation[:-1], the paper's protocol); `dense`, the
positions of the context run dense (the last of them predicts the first continuation token,
so a one-token continuation scores exactly dense) and per_sequence chooses its mask at the
last context token, so all candidate answers of a question share it. Perplexity windows
(`rolling`) always run every token sparse.
"""

import logging
from contextlib import contextmanager
from itertools import chain
from typing import Optional

import torch
from lm_eval.api.model import TemplateLM
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm.auto import tqdm

from shadow_sweep.config import Prefill
from shadow_sweep.data.requests import RequestEncoder
from shadow_sweep.evaluation.scoring import RequestScorer, ScoredRequest, context_groups
from shadow_sweep.models.loading import LoadedModel
from shadow_sweep.selectors.runtime import SelectionRuntime

log = logging.getLogger(__name__)


class SparseLM(TemplateLM):
    def __init__(self, loaded: LoadedModel, batch_size: int = 8, max_length: int = 2048,
                 add_bos_token: Optional[bool] = None,
                 runtime: Optional[SelectionRuntime] = None, prefill: Prefill = Prefill.sparse,
                 share_contexts: bool = True, scored_logits: bool = True):
        """`share_contexts`: requests with equal contexts share its forward where that is exact;
        `scored_logits`: lm_head at the scored positions only (False: at every position, as a
        model without `logits_to_keep` does; the benchmarks' baseline)."""
        super().__init__()
        self.loaded = loaded
        self.tokenizer = loaded.tokenizer
        self.batch_size = batch_size
        self.max_length = max_length
        self.requests = RequestEncoder(loaded.tokenizer, add_bos_token)  # lm-eval's tokenisation rule
        self.runtime = runtime
        self.prefill = Prefill(prefill)
        self.share_contexts = share_contexts
        self.scored_logits = scored_logits
        self._told = False  # the scoring path is logged once

    @property
    def eot_token_id(self) -> int:
        return self.requests.eot_token_id

    @property
    def prefix_token_id(self) -> int:
        return self.requests.prefix_token_id

    def tok_encode(self, string: str, add_special_tokens: Optional[bool] = None, **kwargs) -> list[int]:
        return self.requests.tok_encode(string, add_special_tokens)

    def tok_decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    @torch.no_grad()
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, dense_context: Optional[bool] = None,
                              share_contexts: Optional[bool] = None, **kwargs) -> list[tuple[float, bool]]:
        """Per request: (sum of log p(continuation | context), whether it is the greedy one).
        `dense_context` (default: prefill is dense) runs the context positions dense;
        `share_contexts` (default: the model's) shares equal contexts' forwards where exact."""
        if dense_context is None:
            dense_context = self.prefill == Prefill.dense
        if share_contexts is None:
            share_contexts = self.share_contexts
        scored = [ScoredRequest.of(context, continuation, self.max_length) for _, context, continuation in requests]
        scorer = RequestScorer(self.loaded, self.runtime, self.batch_size, dense_context, self.scored_logits)
        shared = share_contexts and (self.runtime is None or self.runtime.shares_contexts(dense_context))
        groups, whole = context_groups(scored) if shared else ([], list(range(len(scored))))
        if share_contexts and not self._told:
            self._told = True
            log.info("loglikelihood: %s", f"contexts shared by {sum(map(len, groups))} of {len(scored)} requests "
                     "are computed once" if shared else "each request's context computed for it (masks "
                     "chosen per sequence from a sparse context, or a selector that reads the whole input)")
        results: list[Optional[tuple[float, bool]]] = [None] * len(scored)
        with tqdm(total=len(scored), desc="loglikelihood", disable=disable_tqdm) as progress:
            for rows, scores in chain(scorer.shared(scored, groups), scorer.whole(scored, whole)):
                for i, score in zip(rows, scores):
                    results[i] = score
                    self.cache_hook.add_partial("loglikelihood", requests[i][0], score)
                progress.update(len(rows))
        return results

    def rolling(self, text: str, window: int, stride: int) -> list[tuple[float, int]]:
        """(log-likelihood, scored tokens) of each of lm-eval's rolling windows of `window`
        tokens over a whole text: the first predicts its whole length from the prefix token,
        each later one `stride` new tokens after `window - stride` tokens of context (stride =
        window is lm-eval's `loglikelihood_rolling`). Every token sparse: per_token masks, or
        under per_sequence one mask per window chosen at its last token."""
        tokens = self.tok_encode(text)
        windows = [make_disjoint_window(w) for w in get_rolling_token_windows(
            tokens, self.prefix_token_id, max_seq_len=window, context_len=window - stride + 1)]
        requests = [(None, ctx, cont) for ctx, cont in windows]
        scores = self._loglikelihood_tokens(requests, disable_tqdm=True, dense_context=False, share_contexts=False)
        return [(score, len(cont)) for (score, _), (_, cont) in zip(scores, windows)]

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        totals = []
        for request in tqdm(requests, desc="rolling loglikelihood", disable=disable_tqdm):
            totals.append(sum(score for score, _ in self.rolling(request.args[0], self.max_length, self.max_length)))
            self.cache_hook.add_partial("loglikelihood_rolling", (request.args[0],), totals[-1])
        return totals

    @torch.no_grad()
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy generation, one request at a time, masks as the update policy says: per_token
        at every position; per_sequence chosen by the prompt's forward and kept for every new
        token (under a dense prefill the prompt itself runs dense)."""
        outputs = []
        for request in tqdm(requests, desc="generate", disable=disable_tqdm):
            context, kwargs = request.args
            until = kwargs.get("until", [self.tok_decode([self.eot_token_id])])
            until = [until] if isinstance(until, str) else until
            ids = torch.tensor([self.tok_encode(context)[-self.max_length:]], device=self.loaded.device)
            with self._generation(ids.shape[1]):
                out = self.loaded.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                                 max_new_tokens=kwargs.get("max_gen_toks", 256),
                                                 pad_token_id=self.tokenizer.pad_token_id)
            text = self.tok_decode(out[0, ids.shape[1]:].tolist())
            for stop in until:
                text = text.split(stop)[0]
            outputs.append(text)
            self.cache_hook.add_partial("generate_until", request.args, text)
        return outputs

    @contextmanager
    def _generation(self, prompt_length: int):
        """The runtime set up for one generated sequence (nothing without a runtime)."""
        if self.runtime is None:
            yield
            return
        if self.prefill == Prefill.dense:
            self.runtime.dense_prompt(torch.tensor([prompt_length]))
        with self.runtime.held_after_first_forward():
            yield
