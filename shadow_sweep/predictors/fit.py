"""Fitting predictors on traces: seeded train/validation split, AdamW + cosine schedule, MSE.

Rows are examples (per_sequence: inputs at the last token, per-sequence scores) or tokens
(per_token: a `TokenBatch` of per-token samples, split into train/validation BY EXAMPLE so no
example's tokens are on both sides). A learned selector's network is laid out by its
`predictors.layouts.NetworkLayout`. The loss (`predictor.loss`) is MSE(heads) + MSE(neurons), so
a layer's few heads weigh as much as its many neurons, or the same sum of binary cross-entropies
of top-k membership (a layout predicting one kind only: that term alone). Selectors without a
network fit nothing; every fit records the mean normalised calibration scores (static's
scores, and the per-layer budgets of global ranking).
"""

from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from shadow_sweep.config import PredictorConfig, PredictorLoss
from shadow_sweep.models.adapters import ModelShape
from shadow_sweep.predictors.layouts import NetworkLayout, Scores
from shadow_sweep.predictors.networks import GroupedMLP
from shadow_sweep.predictors.quality import quality_report
from shadow_sweep.predictors.targets import normalise_targets
from shadow_sweep.sparsity.topk import keep_count, top_k_mask
from shadow_sweep.traces.collect import TraceBatch


@dataclass
class FittedPredictor:
    kind: str  # the selector it was fitted for
    mean_head_scores: torch.Tensor  # [L, H] normalised calibration targets, mean over training examples
    mean_neuron_scores: torch.Tensor  # [L, I]
    net: Optional[GroupedMLP] = None
    layout: Optional[NetworkLayout] = None  # the network's layout (None without a network)
    metrics: dict = field(default_factory=dict)


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


def network_targets(batch: TraceBatch, target_norm: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised scores of the predicted layers: heads [N, L-1, H], neurons [N, L-1, I]."""
    return (normalise_targets(batch.head_scores[:, 1:], target_norm),
            normalise_targets(batch.neuron_scores[:, 1:], target_norm))


def top_membership(targets: torch.Tensor, keep_fraction: float) -> torch.Tensor:
    """1.0 for the round(keep_fraction * U) highest targets of each (row, layer), else 0.0."""
    return top_k_mask(targets, keep_count(1.0 - keep_fraction, targets.shape[-1]))


def prediction_loss(cfg: PredictorConfig, predicted: Scores, targets: tuple[torch.Tensor, torch.Tensor]
                    ) -> torch.Tensor:
    """mse: MSE(heads) + MSE(neurons) on the normalised scores; bce_topk: binary cross-entropy of
    the outputs (logits) against membership of each layer's top `bce_keep_fraction` (DejaVu's
    classifier of the kept set). Heads and neurons weigh the same either way; a kind the
    network does not predict (None) has no term."""
    pairs = [(p, t) for p, t in zip(predicted, targets) if p is not None]
    if cfg.loss == PredictorLoss.mse:
        return sum(F.mse_loss(p, t) for p, t in pairs)
    return sum(F.binary_cross_entropy_with_logits(p, top_membership(t, cfg.bce_keep_fraction)) for p, t in pairs)


EXAMPLE_EPOCHS = 100  # predictor.epochs=null over per-example rows (a few hundred)
TOKEN_EPOCHS = 20  # and over per-token rows: ~30x more rows; 100 epochs cost 12 min on SmolLM2 for
# +0.007 heads / +0.005 neurons top-30% recall over 20 (docs/predictors.md)


def epochs_for(cfg: PredictorConfig, batch: TraceBatch) -> int:
    """`predictor.epochs`, or the rule for null: fewer passes over the many per-token rows."""
    if cfg.epochs is not None:
        return cfg.epochs
    return TOKEN_EPOCHS if getattr(batch, "example", None) is not None else EXAMPLE_EPOCHS


def train_network(net: GroupedMLP, inputs, heads, neurons, cfg: PredictorConfig, kind: str, layout: NetworkLayout,
                  shape: ModelShape, epochs: int) -> list[float]:
    generator = torch.Generator().manual_seed(cfg.seed)
    optimizer = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    steps_per_epoch = -(-len(inputs) // cfg.batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * steps_per_epoch)
    losses = []
    passes = tqdm(range(epochs), desc=f"fit {kind}", leave=False)
    for _ in passes:
        total = 0.0
        for rows in torch.randperm(len(inputs), generator=generator).split(cfg.batch_size):
            predicted = layout.split(net(inputs[rows]), shape)
            loss = prediction_loss(cfg, predicted, (heads[rows], neurons[rows]))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(rows)
        losses.append(total / len(inputs))
        passes.set_postfix(loss=f"{losses[-1]:.4f}", refresh=False)  # a redraw per epoch defeats mininterval
    return losses


def fit(batch: TraceBatch, cfg: PredictorConfig, shape: ModelShape, kind: str,
        layout: Optional[NetworkLayout] = None) -> FittedPredictor:
    """The mean calibration scores and, with a `layout`, its network trained on the training
    split of the traces (selector `kind`)."""
    torch.manual_seed(cfg.seed)
    train, validation = split_rows(batch, cfg.validation_fraction, cfg.seed)
    norm = cfg.target_norm.value
    fitted = FittedPredictor(kind, normalise_targets(batch.head_scores[train], norm).mean(0),
                             normalise_targets(batch.neuron_scores[train], norm).mean(0), layout=layout)
    fitted.metrics = {"train_examples": len(train), "validation_examples": len(validation),
                      "epochs": epochs_for(cfg, batch)}
    if layout is not None:
        inputs = layout.inputs(batch)
        heads, neurons = network_targets(batch, norm)
        fitted.net = GroupedMLP(layout.mlp_shape(cfg, shape))
        epochs = epochs_for(cfg, batch)
        losses = train_network(fitted.net, inputs[train], heads[train], neurons[train], cfg, kind, layout, shape,
                               epochs)
        with torch.no_grad():
            predicted = layout.split(fitted.net(inputs[validation]), shape)
        validation_loss = prediction_loss(cfg, predicted, (heads[validation], neurons[validation]))
        fitted.metrics.update(train_loss=losses[-1], validation_loss=float(validation_loss))
    return fitted


def untrained(cfg: PredictorConfig, shape: ModelShape, kind: str,
              layout: Optional[NetworkLayout] = None) -> FittedPredictor:
    """A predictor at the model's shapes with seeded random weights and mean scores: latency at
    a model's shape where there is nothing to calibrate on (shape-only models)."""
    g = torch.Generator().manual_seed(cfg.seed)
    fitted = FittedPredictor(kind, torch.rand(shape.num_layers, shape.num_heads, generator=g),
                             torch.rand(shape.num_layers, shape.num_neurons, generator=g), layout=layout)
    if layout is not None:
        torch.manual_seed(cfg.seed)
        fitted.net = GroupedMLP(layout.mlp_shape(cfg, shape))
    return fitted


def validation_targets(batch: TraceBatch, cfg: PredictorConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The normalised true scores of the validation rows: heads [N, L-1, H], neurons [N, L-1, I]."""
    _, validation = split_rows(batch, cfg.validation_fraction, cfg.seed)
    heads, neurons = network_targets(batch, cfg.target_norm.value)
    return heads[validation], neurons[validation]


def network_predictions(fitted: FittedPredictor, batch: TraceBatch, cfg: PredictorConfig, shape: ModelShape
                        ) -> Scores:
    """A fitted network's scores of the validation rows (None for a kind it does not predict)."""
    _, validation = split_rows(batch, cfg.validation_fraction, cfg.seed)
    with torch.no_grad():
        return fitted.layout.split(fitted.net(fitted.layout.inputs(batch)[validation]), shape)


def predictor_quality(predicted: Scores, targets: tuple[torch.Tensor, torch.Tensor], keep_heads: int,
                      keep_neurons: int) -> dict:
    """Spearman and top-k recall (per layer, at these keep counts) of predicted scores of the
    validation rows against their true scores."""
    return quality_report(predicted[0], targets[0], predicted[1], targets[1], keep_heads, keep_neurons)
