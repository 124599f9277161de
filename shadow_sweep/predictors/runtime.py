"""Masks predicted inside every forward pass, per token or per sequence (`sparsity.update`).

per_token: each token's heads and neurons come from that token alone, as decoding uses them:
ShadowLLM from the layer-0 head context at that token (one network call over all B x T
tokens), DejaVu from layer l's input at that token (one call per layer), random from a hash of
(seed, token id, position), the l2_norm oracle from the token's own activations, static the
same for every token. A token's masks never depend on later tokens (tested).
per_sequence: one mask per row, chosen at one position: each row's last real token, or the
positions given with `choose_at` (the last context token under a dense prefill).
`dense_prompt(lengths)` keeps positions t < lengths[b] of the next forward unmasked.
Layer 0 stays dense for ShadowLLM and DejaVu (they predict the later layers). Each kind's
source of scores is one class in `predictors.sources`.
"""

from contextlib import contextmanager
from typing import Optional

import torch

from shadow_sweep.config import ConfigError, CriterionConfig, MaskUpdate, PredictorName
from shadow_sweep.criteria.registry import Criterion
from shadow_sweep.models.loading import LoadedModel
from shadow_sweep.models.masks import HeadNeuronMasks
from shadow_sweep.predictors.fit import FittedPredictor
from shadow_sweep.predictors.inference import MaskPredictor
from shadow_sweep.predictors.layouts import NETWORKS
from shadow_sweep.predictors.sources import SOURCES, ForwardInputs
from shadow_sweep.sparsity.policy import SparsityPolicy


def last_real_token(attention_mask: Optional[torch.Tensor], batch: int, length: int, device) -> torch.Tensor:
    """[B] index of each row's last attended position (left or right padding)."""
    if attention_mask is None:
        return torch.full((batch,), length - 1, dtype=torch.long, device=device)
    return attention_mask.shape[1] - 1 - attention_mask.flip(1).long().argmax(1)


class ContextualMasks:
    """Context manager installing the masks and the predictor's hooks on a model."""

    def __init__(self, loaded: LoadedModel, fitted: FittedPredictor, policy: SparsityPolicy, seed: int = 0,
                 oracle: Optional[tuple[Criterion, CriterionConfig]] = None,
                 update: MaskUpdate = MaskUpdate.per_token):
        predicts_later_layers = fitted.kind in NETWORKS
        if predicts_later_layers and not policy.cfg.keep_first_layer_dense:
            raise ConfigError(f"predictor {fitted.kind.value} predicts layers 1..L-1 only: "
                              "set sparsity.keep_first_layer_dense=true")
        if fitted.kind == PredictorName.oracle and oracle is None:
            raise ValueError("the oracle predictor needs the criterion")
        self.loaded = loaded
        self.fitted = fitted
        self.policy = policy
        self.oracle = oracle
        self.criterion_name = oracle[0].name if oracle else None
        self.seed = seed
        self.update = MaskUpdate(update)
        self.predictor = MaskPredictor(fitted, policy, loaded.device, self.update)
        self.masks = HeadNeuronMasks(loaded.model, loaded.adapter, loaded.shape)
        self.source = SOURCES[fitted.kind](self)
        self.source.check(self.update)
        self.network_calls = 0
        self.inputs: Optional[ForwardInputs] = None
        self.holding = False  # masks of the first forward kept for the later ones (generation)
        self._hold_ready = False
        self._hold_pending = False
        self._handles = []
        self._paused = False
        self._chosen: Optional[torch.Tensor] = None
        self._dense_before: Optional[torch.Tensor] = None

    @property
    def ranking_rule(self) -> str:
        return self.predictor.rule

    def choose_at(self, positions: Optional[torch.Tensor]) -> None:
        """per_sequence: choose the next forward's masks at these positions [B] instead of each
        row's last real token."""
        self._chosen = positions

    def dense_prompt(self, lengths: Optional[torch.Tensor]) -> None:
        """Keep positions t < lengths[b] of the next forward dense (a dense prefill)."""
        self._dense_before = lengths

    @contextmanager
    def paused(self):
        """Forwards inside run unmasked and unpredicted (the oracle's own scoring pass)."""
        self._paused = True
        try:
            yield
        finally:
            self._paused = False

    @contextmanager
    def held_after_first_forward(self):
        """per_sequence generation: the first forward (the prompt) chooses the masks, the later
        one-token forwards reuse them (no prediction, nothing dense)."""
        self._hold_ready = self.update == MaskUpdate.per_sequence
        try:
            yield
        finally:
            self._hold_ready = False
            self._hold_pending = False
            self.holding = False

    def __enter__(self) -> "ContextualMasks":
        self.masks.__enter__()
        model = self.loaded.model
        self._handles.append(model.register_forward_pre_hook(self._on_forward, with_kwargs=True))
        layers = self.loaded.adapter.decoder_layers(model)
        for layer in self.source.layered(self.update):
            self._handles.append(layers[layer].register_forward_pre_hook(self._on_layer(layer), with_kwargs=True))
        self._handles += self.source.hooks(self.update)
        return self

    def __exit__(self, *exc_info) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.masks.__exit__(*exc_info)

    def _on_forward(self, _module, args, kwargs) -> None:
        if self._paused:
            return
        if self._hold_pending:  # a later forward of a held generation
            self.holding = True
            self.masks.dense_before = None
            return
        ids = kwargs.get("input_ids", args[0] if args else None)
        batch, length = ids.shape[:2]
        attention_mask = kwargs.get("attention_mask")
        chosen = last_real_token(attention_mask, batch, length, ids.device)
        if self._chosen is not None:
            chosen = self._chosen.to(ids.device)
        start = kwargs.get("cache_position")
        offset = int(start[0]) if start is not None else 0
        positions = (torch.arange(length, device=ids.device) + offset).expand(batch, length)
        self.inputs = ForwardInputs(ids, attention_mask, positions, chosen)
        self.masks.clear()
        self.masks.dense_before = self._dense_before
        self._chosen = None
        self._dense_before = None
        self.source.start(self.inputs)
        self._hold_pending = self._hold_ready

    def _on_layer(self, layer: int):
        def hook(_module, args, kwargs) -> None:
            if self._paused or self.holding:
                return
            hidden = args[0] if args else kwargs["hidden_states"]  # [B, T, D]
            per_token = self.update == MaskUpdate.per_token
            tokens = hidden if per_token else self.inputs.at_chosen(hidden)
            heads, neurons = self.predictor.layer_masks(layer, *self.source.layer_scores(layer, tokens))
            if not per_token:
                heads, neurons = heads[:, 0], neurons[:, 0]
            self.masks.set_layer(layer, heads, neurons)

        return hook
