"""`oracle`: the criterion on the input itself, an analysis bound (not deployable: it knows what
it would have to compute first). per_token: l2_norm read at each layer's own tensors (head
||a_t,h|| on the head context, neuron |a_t,i| on the neuron activation), so it stays causal; a
deployable selection with the same scores is `teal` on those two inputs. per_sequence: the
criterion from an extra forward and backward over the whole input (loss on all its tokens)
before the masked forward; gradient criteria see the future by construction."""

from dataclasses import asdict

import torch

from shadow_sweep.cache import plain
from shadow_sweep.config import AppConfig, MaskUpdate, require
from shadow_sweep.selectors.ahead import AheadSelector
from shadow_sweep.selectors.base import ALL_UPDATES, Block, ForwardInputs, Point, Reads, SelectorSpec
from shadow_sweep.traces.collect import score_inputs


class OracleSelector(AheadSelector):
    spec = SelectorSpec(name="oracle", blocks=(Block.attention, Block.mlp), point=Point.ahead, updates=ALL_UPDATES,
                        deployable=False, adds="an analysis bound: the scores of the computation it skips",
                        source="the criterion on the input itself")

    @classmethod
    def check(cls, cfg: AppConfig) -> None:
        if cfg.sparsity.update == MaskUpdate.per_token:
            require(cfg.criterion.name.value == "l2_norm", "criterion.name", cfg.criterion.name.value,
                    "l2_norm with predictor=oracle and sparsity.update=per_token (the per-token oracle reads "
                    "the token's own activations; gradient oracles see later tokens)")

    @classmethod
    def chooses_causally(cls, update: MaskUpdate) -> bool:
        return update == MaskUpdate.per_token  # per_sequence scores the whole input first

    @classmethod
    def key_fields(cls, cfg: AppConfig) -> dict:
        return {"criterion": plain(asdict(cfg.criterion))}

    @classmethod
    def uses_criterion(cls, cfg: AppConfig) -> bool:
        return True

    def reads(self) -> dict[Reads, range]:
        if not self.per_token:
            return {}
        layers = range(self.shape.num_layers)
        return {Reads.head_context: layers, Reads.neuron_activation: layers}

    def read(self, where: Reads, layer: int, x: torch.Tensor) -> None:
        if where == Reads.head_context:
            scores = x.unflatten(-1, (self.shape.num_heads, self.shape.head_dim)).float().norm(dim=-1)
            self.set_layer_scores(layer, scores, None)
        else:
            self.set_layer_scores(layer, None, x.float().abs())

    def start(self, inputs: ForwardInputs) -> None:
        if self.per_token:
            return
        ids = inputs.ids
        valid = torch.ones_like(ids, dtype=torch.bool)
        if inputs.attention_mask is not None:
            valid = inputs.attention_mask.bool()
        criterion, cfg = self.point.criterion
        with self.point.unmasked():
            scores = score_inputs(self.point.loaded, criterion, cfg, ids, valid)
        self.set_all(*self.predictor.masks(scores.head_scores, scores.neuron_scores))
