"""Masks predicted inside every forward pass, per row of the batch.

At the start of each forward the row's last real token is read from the attention mask
(left or right padding), and then, by predictor kind:
- shadowllm: a pre-hook on layer 0's output projection reads the head context at that
  token, runs the one network once, and sets the masks of every later layer;
- dejavu: a pre-hook on each decoder layer l >= 1 reads its input hidden state at that
  token, runs layer l's network, and sets layer l's masks (per-layer decisions; under
  global ranking with per-layer budgets from the mean calibration scores);
- static: the same masks, from the mean calibration scores, for every input;
- random: seeded random scores per row; dense: no masks;
- oracle: the criterion computed on the input itself (loss on all its tokens) by an extra
  forward and backward before the masked forward (analysis only).
Layer 0 stays dense for shadowllm and dejavu (they predict the later layers).
"""

from typing import Optional

import torch

from shadow_sweep.config import ConfigError, CriterionConfig, PredictorName
from shadow_sweep.criteria.registry import Criterion
from shadow_sweep.data.calibration import CalibrationExample, EncodedExample
from shadow_sweep.models.loading import LoadedModel
from shadow_sweep.models.masks import HeadNeuronMasks
from shadow_sweep.predictors.fit import FittedPredictor
from shadow_sweep.predictors.inference import MaskPredictor
from shadow_sweep.sparsity.policy import SparsityPolicy
from shadow_sweep.traces.collect import score_batch


def last_real_token(attention_mask: Optional[torch.Tensor], batch: int, length: int, device) -> torch.Tensor:
    """[B] index of each row's last attended position (left or right padding)."""
    if attention_mask is None:
        return torch.full((batch,), length - 1, dtype=torch.long, device=device)
    return attention_mask.shape[1] - 1 - attention_mask.flip(1).long().argmax(1)


class ContextualMasks:
    """Context manager installing the masks and the predictor's hooks on a model."""

    def __init__(self, loaded: LoadedModel, fitted: FittedPredictor, policy: SparsityPolicy, seed: int = 0,
                 oracle: Optional[tuple[Criterion, CriterionConfig]] = None):
        if fitted.kind in (PredictorName.shadowllm, PredictorName.dejavu) and not policy.cfg.keep_first_layer_dense:
            raise ConfigError(f"predictor {fitted.kind.value} predicts layers 1..L-1 only: "
                              "set sparsity.keep_first_layer_dense=true")
        if fitted.kind == PredictorName.oracle and oracle is None:
            raise ValueError("the oracle predictor needs the criterion")
        self.loaded, self.fitted, self.policy, self.oracle = loaded, fitted, policy, oracle
        self.predictor = MaskPredictor(fitted, policy, loaded.device)
        self.masks = HeadNeuronMasks(loaded.model, loaded.adapter, loaded.shape)
        self.generator = torch.Generator().manual_seed(seed)
        self.network_calls = 0
        self.last: Optional[torch.Tensor] = None
        self._handles = []
        self._busy = False
        self._positions: Optional[torch.Tensor] = None

    def predict_at(self, positions: Optional[torch.Tensor]) -> None:
        """Predict the next forward's masks from these positions [B] instead of each row's last
        real token (e.g. the last context token, so all answers of a question share a mask)."""
        self._positions = positions

    def __enter__(self) -> "ContextualMasks":
        self.masks.__enter__()
        model, adapter = self.loaded.model, self.loaded.adapter
        self._handles.append(model.register_forward_pre_hook(self._on_forward, with_kwargs=True))
        if self.fitted.kind == PredictorName.shadowllm:
            self._handles.append(adapter.head_context_modules(model)[0].register_forward_pre_hook(self._shadowllm))
        if self.fitted.kind == PredictorName.dejavu:
            for layer, module in enumerate(adapter.decoder_layers(model)):
                if layer > 0:
                    self._handles.append(module.register_forward_pre_hook(self._dejavu(layer), with_kwargs=True))
        return self

    def __exit__(self, *exc_info) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.masks.__exit__(*exc_info)

    def _on_forward(self, _module, args, kwargs) -> None:
        if self._busy:
            return
        ids = kwargs.get("input_ids", args[0] if args else None)
        batch, length = ids.shape[:2]
        self.last = last_real_token(kwargs.get("attention_mask"), batch, length, ids.device)
        if self._positions is not None:
            self.last, self._positions = self._positions.to(ids.device), None
        self.masks.clear()
        kind = self.fitted.kind
        if kind == PredictorName.static:
            self.masks.set(*self.predictor.static)
        elif kind == PredictorName.random:
            s = self.loaded.shape
            self.masks.set(*self.policy.masks(torch.rand(batch, s.num_layers, s.num_heads, generator=self.generator),
                                              torch.rand(batch, s.num_layers, s.num_neurons, generator=self.generator)))
        elif kind == PredictorName.oracle:
            self._oracle(ids, kwargs.get("attention_mask"))

    def _rows(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, T, F] at each row's last real token -> [B, F]."""
        return x[torch.arange(x.shape[0], device=x.device), self.last]

    def _shadowllm(self, _module, args) -> None:
        self.network_calls += 1
        self.masks.set(*self.predictor.all_layers(self._rows(args[0])))

    def _dejavu(self, layer: int):
        def hook(_module, args, kwargs) -> None:
            x = self._rows(args[0] if args else kwargs["hidden_states"])
            self.network_calls += 1
            self.masks.set_layer(layer, x.shape[0], *self.predictor.one_layer(layer, x))

        return hook

    def _oracle(self, ids: torch.Tensor, attention_mask: Optional[torch.Tensor]) -> None:
        criterion, cfg = self.oracle
        valid = attention_mask.bool() if attention_mask is not None else torch.ones_like(ids, dtype=torch.bool)
        encoded = [EncodedExample(row[keep].tolist(), 1) for row, keep in zip(ids, valid)]
        labels = [CalibrationExample("oracle", i, "", "") for i in range(len(encoded))]
        self._busy = True
        try:
            scores = score_batch(self.loaded, criterion, cfg, encoded, labels)
        finally:
            self._busy = False
        self.masks.set(*self.policy.masks(scores.head_scores, scores.neuron_scores))
