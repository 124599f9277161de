"""Masks chosen inside every forward pass by a point's selectors, as `sparsity.update` says.

`SelectionRuntime` installs the slot masks (models.masks) and, at every point some selector
reads (a decoder layer's input, a slot's input, the gate's output), one hook that hands the
selectors what they asked for; it never knows which selector runs. At the start of a forward
it records the inputs (`ForwardInputs`), the tokens kept dense (a dense prompt, the first
`sparsity.dense_positions` positions of every sequence) and starts every selector; at its end
the account keeps what the selection realised (selectors.accounting).
per_token: each token's masks come from that token alone (tested: a token's masks never depend
on later tokens); per_sequence: one mask per row, chosen at one position (each row's last real
token, or `choose_at`). `dense_prompt(lengths)` keeps positions t < lengths[b] of the next
forward dense. A forward over cached keys and values (a shared context's continuations) gives
`position_ids`; a token's position is then its place in its sequence, not in the batch.
"""

from contextlib import contextmanager
from typing import Optional

import torch

from shadow_sweep.config import MaskUpdate, SelectionRule
from shadow_sweep.models.loading import LoadedModel
from shadow_sweep.models.masks import LinearInputMasks, Slot
from shadow_sweep.predictors.fit import FittedPredictor
from shadow_sweep.selectors.accounting import SelectionAccount
from shadow_sweep.selectors.base import ForwardInputs, PointContext, Reads, Selector
from shadow_sweep.selectors.registry import PointSelection, selector_class
from shadow_sweep.selectors.traffic import LinearSizes, fixed_bytes
from shadow_sweep.sparsity.policy import SparsityPolicy


def last_real_token(attention_mask: Optional[torch.Tensor], batch: int, length: int, device) -> torch.Tensor:
    """[B] index of each row's last attended position (left or right padding) among the forward's
    `length` tokens (the attention mask's last columns: earlier ones are cached)."""
    if attention_mask is None:
        return torch.full((batch,), length - 1, dtype=torch.long, device=device)
    return length - 1 - attention_mask[:, -length:].flip(1).long().argmax(1)


class SelectionRuntime:
    """Context manager installing a point's masks and its selectors' hooks on a model."""

    def __init__(self, loaded: LoadedModel, selection: PointSelection, policy: SparsityPolicy,
                 fitted: Optional[dict[str, FittedPredictor]] = None, update: MaskUpdate = MaskUpdate.per_token,
                 seed: int = 0, criterion: Optional[tuple] = None, statistics=None,
                 rule: Optional[SelectionRule] = None, levels: Optional[dict] = None, dense_positions: int = 0):
        """`fitted`: each selector's fit by name (those that need one); `criterion`: (Criterion,
        CriterionConfig), the oracle's; `statistics`: selectors.statistics.CalibrationStatistics;
        `levels`: Slot -> [L] per-layer levels of an allocation."""
        self.loaded = loaded
        self.selection = selection
        self.update = MaskUpdate(update)
        self.dense_positions = dense_positions
        masks = LinearInputMasks(loaded.model, loaded.adapter, loaded.shape)
        self.point = PointContext(loaded, policy, self.update, masks, rule, seed, criterion, statistics,
                                  levels=levels or {})
        fitted = fitted or {}
        self.selectors: list[Selector] = [selector_class(name)(self.point, selection.blocks_of(name), fitted.get(name))
                                          for name in selection.names()]
        attention, mlp = selection.points()
        model = loaded.model
        self.account = SelectionAccount(
            LinearSizes.of(model, loaded.adapter, loaded.shape), loaded.shape.num_layers,
            policy.heads.first_pooled_layer, attention, mlp, self.update == MaskUpdate.per_token,
            fixed_bytes(model, model.get_output_embeddings(), model.get_input_embeddings()),
            sum(s.predictor_bytes() for s in self.selectors))
        self.holding = False  # masks of the first forward kept for the later ones (generation)
        self._hold_ready = False
        self._hold_pending = False
        self._handles = []
        self._chosen: Optional[torch.Tensor] = None
        self._dense_before: Optional[torch.Tensor] = None
        self._repeats: Optional[torch.Tensor] = None

    @property
    def masks(self) -> LinearInputMasks:
        return self.point.masks

    @property
    def network_calls(self) -> int:
        return self.point.network_calls

    @property
    def ranking_rule(self) -> str:
        rules = dict.fromkeys(s.ranking_rule for s in self.selectors if s.ranking_rule != "none")
        return "+".join(rules) or "none"

    def choose_at(self, positions: Optional[torch.Tensor]) -> None:
        """per_sequence: choose the next forward's masks at these positions [B] instead of each
        row's last real token."""
        self._chosen = positions

    def dense_prompt(self, lengths: Optional[torch.Tensor]) -> None:
        """Keep positions t < lengths[b] of the next forward dense (a dense prefill)."""
        self._dense_before = lengths

    def count_repeated(self, repeats: torch.Tensor) -> None:
        """The next forward's tokens of row b stand for repeats[b] requests' (a shared context):
        the account counts them that many times."""
        self._repeats = repeats

    def shares_contexts(self, dense_context: bool) -> bool:
        """Whether one forward of a context serves every continuation of it exactly: every
        selector chooses causally under this update, and either each token's masks are its own
        (per_token) or the context runs dense and per_sequence chooses at its last token."""
        causal = all(type(s).chooses_causally(self.update) for s in self.selectors)
        return causal and (self.update == MaskUpdate.per_token or dense_context)

    def unmasked(self):
        """Forwards inside run dense and unread (not counted)."""
        return self.point.unmasked()

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

    def __enter__(self) -> "SelectionRuntime":
        masks = self.masks
        masks.__enter__()
        masks.on_applied = self.account.record
        model, adapter = self.loaded.model, self.loaded.adapter
        self._handles.append(model.register_forward_pre_hook(self._on_forward, with_kwargs=True))
        self._handles.append(model.register_forward_hook(self._on_forward_end))
        layers = adapter.decoder_layers(model)
        gates = adapter.gate_modules(model)
        for selector in self.selectors:
            for where, indices in selector.reads().items():
                for layer in indices:
                    read = self._reader(selector, where)
                    if where == Reads.layer_input:
                        hook = self._layer_input_hook(layer, read)
                        self._handles.append(layers[layer].register_forward_pre_hook(hook, with_kwargs=True))
                    elif where == Reads.gate_output:
                        hook = self._gate_output_hook(layer, read)
                        self._handles.append(gates[layer][0].register_forward_hook(hook))
                    else:
                        masks.readers.setdefault((Slot(where.value), layer), []).append(read)
        return self

    def __exit__(self, *exc_info) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.masks.readers.clear()
        self.masks.on_applied = None
        self.masks.__exit__(*exc_info)

    def _reader(self, selector: Selector, where: Reads):
        def read(layer: int, x: torch.Tensor) -> None:
            if not (self.point.paused or self.holding):
                selector.read(where, layer, x)

        return read

    @staticmethod
    def _layer_input_hook(layer: int, read):
        def hook(_module, args, kwargs) -> None:
            read(layer, args[0] if args else kwargs["hidden_states"])  # [B, T, D]

        return hook

    @staticmethod
    def _gate_output_hook(layer: int, read):
        def hook(_module, _args, out) -> None:
            read(layer, out)  # [B, T, I]

        return hook

    def _dense_tokens(self, positions: torch.Tensor, dense_before: Optional[torch.Tensor]) -> torch.Tensor:
        """[B, T] True where a token stays unmasked: position < dense_positions, or t < dense_before[b]."""
        dense = positions < self.dense_positions
        if dense_before is not None:
            steps = torch.arange(positions.shape[1], device=positions.device)[None, :]
            dense = dense | (steps < dense_before.to(positions.device)[:, None])
        return dense

    def _on_forward(self, _module, args, kwargs) -> None:
        if self.point.paused:
            return
        ids = kwargs.get("input_ids", args[0] if args else None)
        batch, length = ids.shape[:2]
        attention_mask = kwargs.get("attention_mask")
        positions = kwargs.get("position_ids")
        if positions is None:
            start = kwargs.get("cache_position")
            offset = int(start[0]) if start is not None else 0
            positions = torch.arange(length, device=ids.device) + offset
        positions = positions.expand(batch, length)
        if attention_mask is not None:
            attention_mask = attention_mask[:, -length:]  # the forward's own tokens (earlier ones cached)
        valid = torch.ones_like(ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        if self._hold_pending:  # a later forward of a held generation: the masks stay
            self.holding = True
            dense = self._dense_tokens(positions, None)
            self.masks.dense_tokens = dense
            self.account.start(valid & ~dense)
            return
        chosen = last_real_token(attention_mask, batch, length, ids.device)
        if self._chosen is not None:
            chosen = self._chosen.to(ids.device)
        self.point.inputs = ForwardInputs(ids, attention_mask, positions, chosen)
        self.masks.clear()
        dense = self._dense_tokens(positions, self._dense_before)
        self.masks.dense_tokens = dense
        self._chosen = None
        self._dense_before = None
        self.account.start(valid & ~dense, self._repeats)
        self._repeats = None
        for selector in self.selectors:
            selector.start(self.point.inputs)
        self._hold_pending = self._hold_ready

    def _on_forward_end(self, _module, _args, _out) -> None:
        if not self.point.paused:
            self.account.finish()
