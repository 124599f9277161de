"""Fitting predictors on traces: seeded train/validation split, AdamW + cosine schedule, MSE.

Rows are examples (per_sequence: inputs at the last token, per-sequence scores) or tokens
(per_token: a `TokenBatch` of per-token samples, split into train/validation BY EXAMPLE so no
example's tokens are on both sides).
ShadowLLM:  x = layer-0 head context at the token (normalised) -> every layer l >= 1's
            head and neuron scores, one network:            [N, 1, H*d] -> [N, 1, (L-1)(H+I)].
DejaVu:     x_l = layer l's input hidden state at the token -> layer l's scores, one
            network per layer l >= 1 (grouped):             [N, L-1, D] -> [N, L-1, H+I].
The loss (`predictor.loss`) is MSE(heads) + MSE(neurons), so a layer's few heads weigh as much
as its many neurons, or the same sum of binary cross-entropies of top-k membership. static / random / dense / oracle fit nothing; every kind records the mean
normalised calibration scores (static's scores, and DejaVu's per-layer budgets under global
ranking).
"""

from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from shadow_sweep.config import PredictorConfig, PredictorLoss, PredictorName
from shadow_sweep.models.adapters import ModelShape
from shadow_sweep.predictors.networks import GroupedMLP, MLPShape
from shadow_sweep.predictors.quality import quality_report
from shadow_sweep.predictors.targets import normalise_inputs, normalise_targets
from shadow_sweep.sparsity.topk import keep_count, top_k_mask
from shadow_sweep.traces.collect import TraceBatch

WIDTH_CAP = {PredictorName.shadowllm: 2048, PredictorName.dejavu: 1000}  # the papers' widths


@dataclass
class FittedPredictor:
    kind: PredictorName
    mean_head_scores: torch.Tensor  # [L, H] normalised calibration targets, mean over training examples
    mean_neuron_scores: torch.Tensor  # [L, I]
    net: Optional[GroupedMLP] = None
    metrics: dict = field(default_factory=dict)


def default_width(kind: PredictorName, hidden_size: int) -> int:
    """64 * max(2, D // 128), capped at the paper's width: 256 for SmolLM2-135M (D = 576),
    2048 (ShadowLLM) / 1000 (DejaVu) from D = 5120 (OPT-13B) on."""
    return min(WIDTH_CAP[kind], 64 * max(2, hidden_size // 128))


def mlp_shape(cfg: PredictorConfig, shape: ModelShape) -> MLPShape:
    width = cfg.width or default_width(cfg.name, shape.hidden_size)
    bottleneck = width // 4 if cfg.bottleneck is None else cfg.bottleneck
    predicted = shape.num_layers - 1
    if cfg.name == PredictorName.shadowllm:
        return MLPShape(1, shape.num_heads * shape.head_dim, width, cfg.depth, bottleneck,
                        predicted * (shape.num_heads + shape.num_neurons))
    return MLPShape(predicted, shape.hidden_size, width, cfg.depth, bottleneck, shape.num_heads + shape.num_neurons)


def split_indices(n: int, validation_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    cut = max(1, round(validation_fraction * n)) if n > 1 else 0
    return order[cut:].sort().values, order[:cut].sort().values


def split_rows(batch: TraceBatch, validation_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, validation) row indices; rows of one example (a TokenBatch) stay together."""
    examples = getattr(batch, "example", None)
    if examples is None:
        return split_indices(len(batch.head_scores), validation_fraction, seed)
    ids = examples.unique()
    _, held_out = split_indices(len(ids), validation_fraction, seed)
    validation = torch.isin(examples, ids[held_out])
    return (~validation).nonzero()[:, 0], validation.nonzero()[:, 0]


def network_inputs(kind: PredictorName, batch: TraceBatch) -> torch.Tensor:
    """[N, 1, H*d] (ShadowLLM) or [N, L-1, D] (DejaVu), normalised per example (and layer)."""
    if kind == PredictorName.shadowllm:
        return normalise_inputs(batch.shadow_input)[:, None]
    return normalise_inputs(batch.dejavu_input[:, 1:])


def network_targets(batch: TraceBatch, target_norm: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised scores of the predicted layers: heads [N, L-1, H], neurons [N, L-1, I]."""
    return (normalise_targets(batch.head_scores[:, 1:], target_norm),
            normalise_targets(batch.neuron_scores[:, 1:], target_norm))


def split_outputs(kind: PredictorName, out: torch.Tensor, shape: ModelShape) -> tuple[torch.Tensor, torch.Tensor]:
    """Network output -> (heads [N, L-1, H], neurons [N, L-1, I])."""
    n, predicted = out.shape[0], shape.num_layers - 1
    if kind == PredictorName.shadowllm:
        heads = out[:, 0, :predicted * shape.num_heads].reshape(n, predicted, shape.num_heads)
        return heads, out[:, 0, predicted * shape.num_heads:].reshape(n, predicted, shape.num_neurons)
    return out[..., :shape.num_heads], out[..., shape.num_heads:]


def top_membership(targets: torch.Tensor, keep_fraction: float) -> torch.Tensor:
    """1.0 for the round(keep_fraction * U) highest targets of each (row, layer), else 0.0."""
    return top_k_mask(targets, keep_count(1.0 - keep_fraction, targets.shape[-1]))


def prediction_loss(cfg: PredictorConfig, predicted: tuple[torch.Tensor, torch.Tensor],
                    targets: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """mse: MSE(heads) + MSE(neurons) on the normalised scores; bce_topk: binary cross-entropy of
    the outputs (logits) against membership of each layer's top `bce_keep_fraction` (DejaVu's
    classifier of the kept set). Heads and neurons weigh the same either way."""
    if cfg.loss == PredictorLoss.mse:
        return sum(F.mse_loss(p, t) for p, t in zip(predicted, targets))
    return sum(F.binary_cross_entropy_with_logits(p, top_membership(t, cfg.bce_keep_fraction))
               for p, t in zip(predicted, targets))


def train_network(net: GroupedMLP, inputs, heads, neurons, cfg: PredictorConfig, kind: PredictorName,
                  shape: ModelShape) -> list[float]:
    generator = torch.Generator().manual_seed(cfg.seed)
    optimizer = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = -(-len(inputs) // cfg.batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs * steps_per_epoch)
    losses = []
    epochs = tqdm(range(cfg.epochs), desc=f"fit {kind.value}", leave=False)
    for _ in epochs:
        total = 0.0
        for rows in torch.randperm(len(inputs), generator=generator).split(cfg.batch_size):
            predicted = split_outputs(kind, net(inputs[rows]), shape)
            loss = prediction_loss(cfg, predicted, (heads[rows], neurons[rows]))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(rows)
        losses.append(total / len(inputs))
        epochs.set_postfix(loss=f"{losses[-1]:.4f}")
    return losses


def fit(batch: TraceBatch, cfg: PredictorConfig, shape: ModelShape) -> FittedPredictor:
    """Train the network of `cfg.name` (if it has one) on the training split of the traces."""
    torch.manual_seed(cfg.seed)
    train, validation = split_rows(batch, cfg.validation_fraction, cfg.seed)
    norm = cfg.target_norm.value
    fitted = FittedPredictor(cfg.name, normalise_targets(batch.head_scores[train], norm).mean(0),
                             normalise_targets(batch.neuron_scores[train], norm).mean(0))
    fitted.metrics = {"train_examples": len(train), "validation_examples": len(validation)}
    if cfg.name in WIDTH_CAP:
        inputs, (heads, neurons) = network_inputs(cfg.name, batch), network_targets(batch, norm)
        fitted.net = GroupedMLP(mlp_shape(cfg, shape))
        losses = train_network(fitted.net, inputs[train], heads[train], neurons[train], cfg, cfg.name, shape)
        with torch.no_grad():
            predicted = split_outputs(cfg.name, fitted.net(inputs[validation]), shape)
        validation_loss = prediction_loss(cfg, predicted, (heads[validation], neurons[validation]))
        fitted.metrics.update(train_loss=losses[-1], validation_loss=float(validation_loss))
    return fitted


def predictor_quality(fitted: FittedPredictor, batch: TraceBatch, cfg: PredictorConfig, shape: ModelShape,
                      keep_heads: int, keep_neurons: int) -> dict:
    """Spearman and top-k recall (per layer, at these keep counts) on the validation split;
    empty for dense and oracle (nothing is predicted)."""
    if fitted.kind in (PredictorName.dense, PredictorName.oracle):
        return {}
    _, validation = split_rows(batch, cfg.validation_fraction, cfg.seed)
    heads, neurons = network_targets(batch, cfg.target_norm.value)
    heads, neurons = heads[validation], neurons[validation]
    if fitted.net is not None:
        with torch.no_grad():
            predicted = split_outputs(fitted.kind, fitted.net(network_inputs(fitted.kind, batch)[validation]), shape)
    elif fitted.kind == PredictorName.static:
        predicted = (fitted.mean_head_scores[None, 1:].expand_as(heads),
                     fitted.mean_neuron_scores[None, 1:].expand_as(neurons))
    else:  # random
        generator = torch.Generator().manual_seed(cfg.seed)
        predicted = (torch.rand(heads.shape, generator=generator), torch.rand(neurons.shape, generator=generator))
    return quality_report(predicted[0], heads, predicted[1], neurons, keep_heads, keep_neurons)
