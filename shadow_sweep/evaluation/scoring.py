"""Scoring loglikelihood requests: log p(continuation | context) and whether the continuation is
the greedy one, with lm_head and the log-softmax run at the scored positions only.

Two ways to the same scores:
- `RequestScorer.whole`: each request's whole input (context + continuation[:-1]) in
  length-sorted, right-padded batches. Every selector and update policy.
- `RequestScorer.shared`: requests with equal context tokens (the choices of one
  multiple-choice document) share one forward of the context (context[:-1], left-padded,
  its K/V cached), then each request runs [context[-1]] + continuation[:-1] over that cache,
  several documents' continuations in one batch, where that saves tokens (`context_groups`).
  Exact where a token's masks depend on it and
  the tokens before it only (per_token), or where the context runs dense and per_sequence
  chooses at the last context token (dense prefill): `SelectionRuntime.shares_contexts`.
"""

import copy
import inspect
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import torch

from shadow_sweep.models.loading import LoadedModel
from shadow_sweep.selectors.runtime import SelectionRuntime

Score = tuple[float, bool]  # (sum of the continuation's log-probabilities, all of it greedy)
CONTINUATIONS = 8  # continuations of one context forward: at most this x batch_size (their K/V copies)


@dataclass(frozen=True)
class ScoredRequest:
    """One request as the model runs it: `inputs` = (context + continuation)[:-1] of the last
    max_length + 1 tokens; `targets` = the continuation, predicted at the last len(targets)
    input positions."""

    inputs: tuple[int, ...]
    targets: tuple[int, ...]

    @classmethod
    def of(cls, context: Sequence[int], continuation: Sequence[int], max_length: int) -> "ScoredRequest":
        whole = (list(context) + list(continuation))[-(max_length + 1):]
        return cls(tuple(whole[:-1]), tuple(whole[-len(continuation):]))

    @property
    def split(self) -> int:
        """Input tokens before the first scored position (c - 1 for a context of c tokens): the
        part that requests with equal contexts share."""
        return len(self.inputs) - len(self.targets)


def context_groups(requests: Sequence[ScoredRequest]) -> tuple[list[list[int]], list[int]]:
    """(groups of >= 2 request indices whose inputs hold the same tokens before `split`, the
    indices of the other requests). A group shares its context only where that saves at least
    as many tokens, (k - 1) x split, as its continuations hold: sharing gives up sorting its
    continuations by length with every other request, so a short context (PIQA's goal before
    two long solutions) costs more shared than whole."""
    by_prefix: dict[tuple[int, ...], list[int]] = {}
    for i, request in enumerate(requests):
        key = request.inputs[:request.split] if request.split > 0 else (-1 - i,)  # nothing to share
        by_prefix.setdefault(key, []).append(i)
    groups = []
    whole = []
    for indices in by_prefix.values():
        saved = (len(indices) - 1) * requests[indices[0]].split
        if len(indices) > 1 and saved >= sum(len(requests[i].targets) for i in indices):
            groups.append(indices)
        else:
            whole += indices
    return groups, whole


def padded(rows: Sequence[Sequence[int]], pad: int, left: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rows -> (ids [B, T], attention mask [B, T]), padded on the right (or left)."""
    length = max(len(row) for row in rows)
    ids = torch.full((len(rows), length), pad, dtype=torch.long)
    attention = torch.zeros_like(ids)
    for r, row in enumerate(rows):
        columns = slice(length - len(row), length) if left else slice(0, len(row))
        ids[r, columns] = torch.tensor(row, dtype=torch.long)
        attention[r, columns] = 1
    return ids, attention


def continuation_scores(logits: torch.Tensor, batch: Sequence[ScoredRequest]) -> list[Score]:
    """logits [B, N, V] at each row's scored positions (row r's first len(targets) of N) -> scores:
    sum over the targets of logit[t] - logsumexp(logits) (log-softmax at the target only), and
    whether every target is the argmax. Computed where the logits are; [B] numbers come back."""
    logits = logits.float()
    width = logits.shape[1]
    targets = torch.tensor([list(r.targets) + [0] * (width - len(r.targets)) for r in batch], device=logits.device)
    scored = torch.arange(width, device=logits.device)[None, :] < torch.tensor(
        [len(r.targets) for r in batch], device=logits.device)[:, None]
    log_probs = logits.gather(-1, targets[..., None])[..., 0] - torch.logsumexp(logits, dim=-1)
    totals = torch.where(scored, log_probs, 0.0).sum(1).tolist()
    greedy = ((logits.argmax(-1) == targets) | ~scored).all(1).tolist()
    return [(total, bool(g)) for total, g in zip(totals, greedy)]


def scored_positions(starts: Sequence[int], batch: Sequence[ScoredRequest]) -> torch.Tensor:
    """[B, N] the input columns of each row's scored positions, from column starts[r]; N is the
    longest continuation, shorter rows repeat their last position."""
    width = max(len(r.targets) for r in batch)
    steps = torch.arange(width)[None, :]
    counts = torch.tensor([len(r.targets) for r in batch])[:, None]
    return torch.tensor(list(starts))[:, None] + torch.minimum(steps, counts - 1)


class RequestScorer:
    """Scores requests `batch_size` rows a forward on a loaded model whose runtime (None:
    dense) is installed; `dense_context`: the context positions run dense; `scored_logits`:
    lm_head at the scored positions only where the model takes `logits_to_keep`."""

    def __init__(self, loaded: LoadedModel, runtime: Optional[SelectionRuntime], batch_size: int,
                 dense_context: bool, scored_logits: bool = True):
        self.model = loaded.model
        self.device = loaded.device
        self.pad = loaded.tokenizer.pad_token_id
        self.runtime = runtime
        self.batch_size = batch_size
        self.dense_context = dense_context and runtime is not None
        self.keeps_logits = scored_logits and "logits_to_keep" in inspect.signature(self.model.forward).parameters

    def whole(self, requests: Sequence[ScoredRequest], indices: Sequence[int]
              ) -> Iterator[tuple[list[int], list[Score]]]:
        """(request indices, their scores) per batch, each request's whole input in one row."""
        order = sorted(indices, key=lambda i: -len(requests[i].inputs))
        for start in range(0, len(order), self.batch_size):
            rows = order[start:start + self.batch_size]
            batch = [requests[i] for i in rows]
            ids, attention = padded([r.inputs for r in batch], self.pad)
            self._dense_context_until(torch.tensor([r.split + 1 for r in batch]))  # c - 1: the last context token
            logits = self._logits(ids, attention, scored_positions([r.split for r in batch], batch))
            yield rows, continuation_scores(logits, batch)

    def shared(self, requests: Sequence[ScoredRequest], groups: Sequence[Sequence[int]]
               ) -> Iterator[tuple[list[int], list[Score]]]:
        """(request indices, their scores) per batch of continuations: one forward of up to
        `batch_size` shared contexts, then their continuations sorted by length, `batch_size`
        rows a forward, each row over its context's cached K/V."""
        for chunk in self._chunks(sorted(groups, key=lambda g: -requests[g[0]].split)):
            prefixes = [requests[g[0]].inputs[:requests[g[0]].split] for g in chunk]
            ids, attention = padded(prefixes, self.pad, left=True)
            positions = (attention.cumsum(1) - 1).clamp(min=0)
            with self._context_pass(torch.tensor([len(g) for g in chunk])):
                out = self.model(input_ids=ids.to(self.device), attention_mask=attention.to(self.device),
                                 position_ids=positions.to(self.device), use_cache=True,
                                 **({"logits_to_keep": 1} if self.keeps_logits else {}))
            context_of = {i: j for j, group in enumerate(chunk) for i in group}
            ordered = sorted(context_of, key=lambda i: -len(requests[i].targets))
            for start in range(0, len(ordered), self.batch_size):
                rows = ordered[start:start + self.batch_size]
                owner = torch.tensor([context_of[i] for i in rows])
                last = start + self.batch_size >= len(ordered)
                cache = out.cache if last else copy.deepcopy(out.cache)
                cache.reorder_cache(owner.to(self.device))  # each row gets its context's K/V
                batch = [requests[i] for i in rows]
                yield rows, self._continuations(batch, cache, attention[owner])

    def _continuations(self, batch: Sequence[ScoredRequest], cache, context_attention: torch.Tensor) -> list[Score]:
        """Scores of rows [context[-1]] + continuation[:-1] over their contexts' cache;
        `context_attention` [B, P]: the contexts' attention mask (left-padded)."""
        ids, attention = padded([r.inputs[r.split:] for r in batch], self.pad)
        steps = torch.arange(ids.shape[1])[None, :]
        positions = context_attention.sum(1)[:, None] + steps
        self._dense_context_until(torch.ones(len(batch), dtype=torch.long))  # position 0: the last context token
        logits = self._logits(ids, torch.cat([context_attention, attention], 1),
                              scored_positions([0] * len(batch), batch), cache=cache,
                              position_ids=positions.to(self.device), use_cache=True)
        return continuation_scores(logits, batch)

    def _chunks(self, groups: list[Sequence[int]]) -> Iterator[list[Sequence[int]]]:
        """Consecutive groups, at most `batch_size` contexts and CONTINUATIONS x batch_size
        continuations together (a larger group alone)."""
        chunk: list[Sequence[int]] = []
        rows = 0
        for group in groups:
            if chunk and (len(chunk) == self.batch_size or rows + len(group) > CONTINUATIONS * self.batch_size):
                yield chunk
                chunk = []
                rows = 0
            chunk.append(group)
            rows += len(group)
        if chunk:
            yield chunk

    def _dense_context_until(self, lengths: torch.Tensor) -> None:
        """Under a dense context, the next forward keeps positions t < lengths[b] dense and
        per_sequence chooses its masks at lengths[b] - 1 (the last context token)."""
        if self.dense_context:
            self.runtime.dense_prompt(lengths)
            self.runtime.choose_at(lengths - 1)

    def _context_pass(self, repeats: torch.Tensor):
        """The shared contexts' forward: dense and unread under a dense context; else masked as
        always, each row's tokens counted once per request that shares them."""
        if self.runtime is None:
            return nullcontext()
        if self.dense_context:
            return self.runtime.unmasked()
        self.runtime.count_repeated(repeats)
        return nullcontext()

    def _logits(self, ids: torch.Tensor, attention: torch.Tensor, positions: torch.Tensor, **kwargs) -> torch.Tensor:
        """The logits [B, N, V] at input columns `positions` [B, N] (lm_head on those only)."""
        device = self.device
        if self.keeps_logits:
            kwargs["logits_to_keep"] = positions.to(device)
        logits = self.model(input_ids=ids.to(device), attention_mask=attention.to(device), **kwargs).logits
        if self.keeps_logits:
            return logits
        return torch.take_along_dim(logits, positions.to(device)[..., None], dim=1)
