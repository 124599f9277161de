"""Batched, padding-aware trace collection, exact per example.

Each batch is right-padded; the loss is the SUM over examples of each example's negative
log-likelihood of its answer tokens, so dL/da of every example is its own. Criteria that
need no gradient run under `torch.no_grad` (no backward at all); grasp takes H g by double
backward: H g = d/da <g, stop_grad(g)> with g = dL/da (create_graph=True).

The same pass records per-token samples (`TokenBatch`) at given positions of each example:
the learned selectors' inputs at that token (layer-0 head context, each layer's input, each
layer's MLP input) and the criterion's per-token form, with g_t from the
language-model loss on every real token (each position predicts the next token; a second
backward of the same forward).
"""

import random
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from shadow_sweep.config import CriterionConfig
from shadow_sweep.criteria.registry import Criterion
from shadow_sweep.criteria.units import UnitTensors
from shadow_sweep.data.calibration import CalibrationExample, EncodedExample
from shadow_sweep.models.loading import LoadedModel
from shadow_sweep.traces.recorder import LayerRecorder


class NonFiniteScoreError(FloatingPointError):
    pass


@dataclass
class TraceBatch:
    shadow_input: torch.Tensor  # [B, H*d] layer-0 head context at the last real token
    dejavu_input: torch.Tensor  # [B, L, D] every layer's input hidden state at the last real token
    head_scores: torch.Tensor  # [B, L, H]
    neuron_scores: torch.Tensor  # [B, L, I]
    mlp_input: torch.Tensor  # [B, L, D] every layer's MLP input (after attention and its norm) there


@dataclass
class TokenBatch(TraceBatch):
    """Per-token samples [P, ...]: the fields of TraceBatch at single tokens, plus where each
    sample comes from (for splits by example)."""

    example: torch.Tensor  # [P] index of the calibration example
    position: torch.Tensor  # [P] token position within it


def sample_positions(example: CalibrationExample, tokens: int, count: Optional[int]) -> list[int]:
    """Sorted positions among 0..tokens-2 (each has a next-token target), at most `count`
    (None: all), seeded by (source, document id): every criterion sees the same positions."""
    candidates = list(range(tokens - 1))
    if count is None or count >= len(candidates):
        return candidates
    return sorted(random.Random(f"{example.source}:{example.doc_id}").sample(candidates, count))


def pad_batch(encoded: list[EncodedExample], pad_id: int) -> tuple[torch.Tensor, ...]:
    """input_ids, valid [B, T] (real tokens), answer [B, T] (loss positions: the token at t
    is predicted at t-1), targets [B, T] (the token each position predicts, -1 if none)."""
    length = max(len(e.input_ids) for e in encoded)
    ids = torch.full((len(encoded), length), pad_id, dtype=torch.long)
    valid = torch.zeros((len(encoded), length), dtype=torch.bool)
    answer = torch.zeros_like(valid)
    for row, e in enumerate(encoded):
        n = len(e.input_ids)
        ids[row, :n] = torch.tensor(e.input_ids)
        valid[row, :n] = True
        answer[row, e.answer_start:n] = True
    targets = torch.full_like(ids, -1)
    targets[:, :-1] = torch.where(valid[:, 1:], ids[:, 1:], -1)
    return ids, valid, answer, targets


def scored_positions(answer: torch.Tensor) -> torch.Tensor:
    """Positions whose logits predict an answer token in some row: the only logits computed
    (`logits_to_keep`), which spares most of the vocabulary projection and its gradient."""
    return answer[:, 1:].any(0).nonzero().squeeze(1)


def answer_loss(logits: torch.Tensor, ids: torch.Tensor, answer: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Sum over examples and answer tokens of -log p(token | prefix); logits [B, K, V] are
    those of `positions` (position p predicts token p + 1)."""
    nll = F.cross_entropy(logits.flatten(0, 1).float(), ids[:, positions + 1].flatten(), reduction="none")
    return (nll.view(ids.shape[0], -1) * answer[:, positions + 1]).sum()


def language_model_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Sum over examples and real positions with a next token of -log p(next | prefix);
    logits [B, T, V], targets [B, T] (-1: none)."""
    nll = F.cross_entropy(logits.flatten(0, 1).float(), targets.clamp_min(0).flatten(), reduction="none")
    return (nll.view(targets.shape) * (targets >= 0)).sum()


def _gradients(loss: torch.Tensor, tensors: list, hvp: bool, keep_graph: bool) -> tuple[list, list]:
    """dL/da for every tensor, and H g (double backward) when `hvp`."""
    grads = torch.autograd.grad(loss, tensors, create_graph=hvp, retain_graph=True)
    hgs = [None] * len(tensors)
    if hvp:
        inner = sum((g * g.detach()).sum() for g in grads)
        hgs = list(torch.autograd.grad(inner, tensors, retain_graph=keep_graph))
    return [g.detach() for g in grads], hgs


class _LayerViews:
    """One layer's tensors in the criteria's per-unit view [B, T, U, k]."""

    def __init__(self, shape, batch: int):
        self.shape = shape
        self.batch = batch

    def heads(self, x):
        return None if x is None else x.detach().float().unflatten(-1, (self.shape.num_heads, self.shape.head_dim))

    def neurons(self, x):
        return None if x is None else x.detach().float().view(self.batch, -1, self.shape.num_neurons, 1)

    def units(self, layer: int, heads: list, neurons: list, grads: list, hgs: list, valid, targets
              ) -> tuple[UnitTensors, UnitTensors]:
        """Layer `layer`'s heads and neurons as UnitTensors, with these gradients (per layer,
        heads first then neurons, None entries without backward)."""
        layers = self.shape.num_layers
        h = UnitTensors(self.heads(heads[layer]), valid, targets, self.heads(grads[layer]), self.heads(hgs[layer]))
        n = UnitTensors(self.neurons(neurons[layer]), valid, targets, self.neurons(grads[layers + layer]),
                        self.neurons(hgs[layers + layer]))
        return h, n


def score_batch(loaded: LoadedModel, criterion: Criterion, cfg: CriterionConfig, encoded: list[EncodedExample],
                labels: list[CalibrationExample], token_positions: Optional[list[list[int]]] = None
                ) -> tuple[TraceBatch, Optional[TokenBatch]]:
    """Per-example scores; with `token_positions` (per example), per-token samples too."""
    device, shape = loaded.device, loaded.shape
    ids, valid, answer, targets = (t.to(device) for t in pad_batch(encoded, loaded.tokenizer.pad_token_id))
    batch = ids.shape[0]
    layers = shape.num_layers
    per_token = token_positions is not None
    with LayerRecorder(loaded.model, loaded.adapter) as recorder, torch.set_grad_enabled(criterion.needs_grad):
        positions = scored_positions(answer)
        keep = 0 if per_token else positions  # the language-model loss needs every position's logits
        logits = loaded.model(input_ids=ids, attention_mask=valid.long(),
                              logits_to_keep=keep if criterion.needs_grad else 1).logits
        heads, neurons = recorder.heads, recorder.neurons  # neurons may be [B*T, I] (OPT)
        grads = hgs = token_grads = token_hgs = [None] * (2 * layers)
        if criterion.needs_grad:
            answer_logits = logits[:, positions] if per_token else logits
            grads, hgs = _gradients(answer_loss(answer_logits, ids, answer, positions), heads + neurons,
                                    criterion.needs_hvp, keep_graph=per_token)
            if per_token:
                token_grads, token_hgs = _gradients(language_model_loss(logits, targets), heads + neurons,
                                                    criterion.needs_hvp, keep_graph=False)
        last = valid.sum(1) - 1
        rows = torch.arange(batch, device=device)
        shadow_input = heads[0][rows, last].detach().float()
        dejavu_input = torch.stack([h[rows, last] for h in recorder.hidden], 1).detach().float()
        hidden = [h.detach() for h in recorder.hidden]
        mlp_inputs = [m.detach().view(batch, -1, shape.hidden_size) for m in recorder.mlp_inputs]
        mlp_input = torch.stack([m[rows, last] for m in mlp_inputs], 1).float()

    view = _LayerViews(shape, batch)
    head_scores, neuron_scores = [], []
    for layer in range(layers):
        h, n = view.units(layer, heads, neurons, grads, hgs, valid, targets)
        head_scores.append(_finite(criterion.heads(h, cfg), criterion, "heads", layer, labels))
        neuron_scores.append(_finite(criterion.neurons(n, cfg, shape.head_dim), criterion, "neurons", layer, labels))
    sequence = TraceBatch(shadow_input, dejavu_input, torch.stack(head_scores, 1), torch.stack(neuron_scores, 1),
                          mlp_input)
    if not per_token:
        return sequence, None
    sample_rows = torch.tensor([r for r, ps in enumerate(token_positions) for _ in ps], dtype=torch.long)
    sampled_at = torch.tensor([p for ps in token_positions for p in ps], dtype=torch.long)
    at = (sample_rows.to(device), sampled_at.to(device))
    sample_labels = [labels[r] for r in sample_rows.tolist()]
    token_heads, token_neurons = [], []
    for layer in range(layers):
        h, n = view.units(layer, heads, neurons, token_grads, token_hgs, valid, targets)
        token_heads.append(_finite(criterion.per_token(h)[at], criterion, "heads", layer, sample_labels))
        token_neurons.append(_finite(criterion.per_token(n)[at], criterion, "neurons", layer, sample_labels))
    tokens = TokenBatch(heads[0].detach()[at].float(), torch.stack([x[at] for x in hidden], 1).float(),
                        torch.stack(token_heads, 1), torch.stack(token_neurons, 1),
                        torch.stack([m[at] for m in mlp_inputs], 1).float(), sample_rows, sampled_at)
    return sequence, tokens


def score_inputs(loaded: LoadedModel, criterion: Criterion, cfg: CriterionConfig, ids: torch.Tensor,
                 valid: torch.Tensor) -> TraceBatch:
    """Per-sequence scores of model inputs ids [B, T] (valid: real tokens), the loss on every
    token after the first: the oracle's masks for these very inputs."""
    encoded = [EncodedExample(row[keep].tolist(), 1) for row, keep in zip(ids, valid)]
    labels = [CalibrationExample("oracle", i, "", "") for i in range(len(encoded))]
    return score_batch(loaded, criterion, cfg, encoded, labels)[0]


def _finite(scores: torch.Tensor, criterion: Criterion, kind: str, layer: int,
            labels: list[CalibrationExample]) -> torch.Tensor:
    bad = ~torch.isfinite(scores)
    if bad.any():
        row = int(bad.any(-1).nonzero()[0])
        example = labels[row]
        raise NonFiniteScoreError(
            f"criterion {criterion.name!r} gave a non-finite score ({scores[bad][0].item()}) for {kind} at layer "
            f"{layer}, calibration example {example.source}#{example.doc_id} (try model.dtype=float32)")
    return scores


@contextmanager
def attention_for(loaded: LoadedModel, criterion: Criterion):
    """Eager attention while a criterion needs double backward (fused CPU SDPA kernels have
    no second derivative); the configured implementation is restored afterwards."""
    configured = loaded.model.config._attn_implementation
    if criterion.needs_hvp and configured != "eager":
        loaded.model.set_attn_implementation("eager")
    try:
        yield
    finally:
        if loaded.model.config._attn_implementation != configured:
            loaded.model.set_attn_implementation(configured)


def _concatenated(parts: list, kind: type) -> TraceBatch:
    return kind(*(torch.cat([getattr(p, f) for p in parts]) for f in kind.__dataclass_fields__))


def collect(loaded: LoadedModel, criterion: Criterion, cfg: CriterionConfig, encoded: list[EncodedExample],
            labels: list[CalibrationExample], batch_size: int, progress: bool = True,
            positions_per_example: Optional[int] = 0) -> tuple[TraceBatch, Optional[TokenBatch]]:
    """Score every example in batches of `batch_size`, examples of similar length together
    (less padding): one TraceBatch in the order of `encoded`, and, when the criterion has a
    per-token form and `positions_per_example` is not 0 (None: every position), the per-token
    samples ordered by (example, position)."""
    per_token = criterion.token_score is not None and positions_per_example != 0
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].input_ids))
    sequences, tokens = [], []
    with attention_for(loaded, criterion):
        for start in tqdm(range(0, len(order), batch_size), desc=f"traces ({criterion.name})", disable=not progress):
            rows = order[start:start + batch_size]
            chosen = [sample_positions(labels[i], len(encoded[i].input_ids), positions_per_example)
                      for i in rows] if per_token else None
            sequence, sampled = score_batch(loaded, criterion, cfg, [encoded[i] for i in rows],
                                            [labels[i] for i in rows], chosen)
            sequences.append(sequence)
            if sampled is not None:
                sampled.example = torch.tensor(rows)[sampled.example]  # batch rows -> example indices
                tokens.append(sampled)
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.tensor(order)] = torch.arange(len(order))
    sequence = _concatenated(sequences, TraceBatch)
    sequence = TraceBatch(*(getattr(sequence, f)[inverse] for f in TraceBatch.__dataclass_fields__))
    if not tokens:
        return sequence, None
    token_batch = _concatenated(tokens, TokenBatch)
    ranks = torch.argsort(token_batch.example * (1 << 20) + token_batch.position)
    return sequence, TokenBatch(*(getattr(token_batch, f)[ranks] for f in TokenBatch.__dataclass_fields__))
