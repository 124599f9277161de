"""Batched, padding-aware trace collection, exact per example.

Each batch is right-padded; the loss is the SUM over examples of each example's negative
log-likelihood of its answer tokens, so dL/da of every example is its own. Criteria that
need no gradient run under `torch.no_grad` (no backward at all); grasp takes H g by double
backward: H g = d/da <g, stop_grad(g)> with g = dL/da (create_graph=True).
"""

from contextlib import contextmanager
from dataclasses import dataclass

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


def score_batch(loaded: LoadedModel, criterion: Criterion, cfg: CriterionConfig, encoded: list[EncodedExample],
                labels: list[CalibrationExample]) -> TraceBatch:
    device, shape = loaded.device, loaded.shape
    ids, valid, answer, targets = (t.to(device) for t in pad_batch(encoded, loaded.tokenizer.pad_token_id))
    batch = ids.shape[0]
    with LayerRecorder(loaded.model, loaded.adapter) as recorder, torch.set_grad_enabled(criterion.needs_grad):
        positions = scored_positions(answer)
        logits = loaded.model(input_ids=ids, attention_mask=valid.long(),
                              logits_to_keep=positions if criterion.needs_grad else 1).logits
        heads, neurons = recorder.heads, recorder.neurons  # neurons may be [B*T, I] (OPT)
        head_grads = neuron_grads = head_hg = neuron_hg = [None] * shape.num_layers
        if criterion.needs_grad:
            loss = answer_loss(logits, ids, answer, positions)
            grads = torch.autograd.grad(loss, heads + neurons, create_graph=criterion.needs_hvp)
            if criterion.needs_hvp:
                inner = sum((g * g.detach()).sum() for g in grads)
                hgs = torch.autograd.grad(inner, heads + neurons)
                head_hg, neuron_hg = hgs[:shape.num_layers], hgs[shape.num_layers:]
            head_grads, neuron_grads = grads[:shape.num_layers], grads[shape.num_layers:]
        last = valid.sum(1) - 1
        rows = torch.arange(batch, device=device)
        shadow_input = heads[0][rows, last].detach().float()
        dejavu_input = torch.stack([h[rows, last] for h in recorder.hidden], 1).detach().float()

    def per_head(x):
        return None if x is None else x.detach().float().unflatten(-1, (shape.num_heads, shape.head_dim))

    def per_neuron(x):
        return None if x is None else x.detach().float().view(batch, -1, shape.num_neurons, 1)

    head_scores, neuron_scores = [], []
    for layer in range(shape.num_layers):
        h = UnitTensors(per_head(heads[layer]), valid, targets, per_head(head_grads[layer]), per_head(head_hg[layer]))
        n = UnitTensors(per_neuron(neurons[layer]), valid, targets, per_neuron(neuron_grads[layer]),
                        per_neuron(neuron_hg[layer]))
        head_scores.append(_finite(criterion.heads(h, cfg), criterion, "heads", layer, labels))
        neuron_scores.append(_finite(criterion.neurons(n, cfg, shape.head_dim), criterion, "neurons", layer, labels))
    return TraceBatch(shadow_input, dejavu_input, torch.stack(head_scores, 1), torch.stack(neuron_scores, 1))


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


def collect(loaded: LoadedModel, criterion: Criterion, cfg: CriterionConfig, encoded: list[EncodedExample],
            labels: list[CalibrationExample], batch_size: int, progress: bool = True) -> TraceBatch:
    """Score every example in batches of `batch_size`, examples of similar length together
    (less padding); the result is one TraceBatch in the order of `encoded`."""
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].input_ids))
    parts = []
    with attention_for(loaded, criterion):
        for start in tqdm(range(0, len(order), batch_size), desc=f"traces ({criterion.name})", disable=not progress):
            rows = order[start:start + batch_size]
            parts.append(score_batch(loaded, criterion, cfg, [encoded[i] for i in rows], [labels[i] for i in rows]))
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.tensor(order)] = torch.arange(len(order))
    return TraceBatch(*(torch.cat([getattr(p, f) for p in parts])[inverse] for f in TraceBatch.__dataclass_fields__))
