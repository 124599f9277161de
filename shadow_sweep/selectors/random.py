"""`random`: seeded uniform scores hashed from (seed, token id, position, layer, unit): a row
scores the same alone or in any batch, and differently at every token (the floor any selector
must beat). per_sequence: the scores of each row's chosen token."""

import torch

from shadow_sweep.config import AppConfig, PredictorConfig
from shadow_sweep.models.adapters import ModelShape
from shadow_sweep.predictors.fit import FittedPredictor
from shadow_sweep.selectors.ahead import AheadSelector
from shadow_sweep.selectors.base import ALL_UPDATES, Block, ForwardInputs, Point, Reads, SelectorSpec

_MASK32 = 0xFFFFFFFF
_NEURON_OFFSET = 1 << 20


def _mix(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (int64 tensors holding values < 2^32; products stay < 2^63)."""
    x = ((x ^ (x >> 16)) * 0x45D9F3B) & _MASK32
    x = ((x ^ (x >> 16)) * 0x45D9F3B) & _MASK32
    return x ^ (x >> 16)


def hashed_uniform(seed: int, ids: torch.Tensor, positions: torch.Tensor, layer: int, units: int,
                   offset: int = 0) -> torch.Tensor:
    """Uniform [0, 1) scores [B, T, U], a function of (seed, token id, position, layer, unit)
    only: a row scores the same alone or in any batch, and differently at every token."""
    key = _mix(torch.full_like(ids, (seed * 0x9E3779B1 + layer) & _MASK32))
    key = _mix(key ^ (ids & _MASK32))
    key = _mix(key ^ (positions & _MASK32))
    unit = torch.arange(offset, offset + units, device=ids.device)
    return _mix(key[..., None] ^ unit).to(torch.float64).div(2.0**32).float()


class RandomSelector(AheadSelector):
    spec = SelectorSpec(name="random", blocks=(Block.attention, Block.mlp), point=Point.ahead, updates=ALL_UPDATES,
                        decode=True, adds="a hash per unit", source="seeded uniform scores")

    @classmethod
    def key_fields(cls, cfg: AppConfig) -> dict:
        return {"seed": cfg.predictor.seed}

    @classmethod
    def quality_predictions(cls, fitted: FittedPredictor, targets: tuple, batch, cfg: PredictorConfig,
                            shape: ModelShape):
        """Seeded uniform scores (the chance level of the quality metrics)."""
        generator = torch.Generator().manual_seed(cfg.seed)
        return tuple(torch.rand(t.shape, generator=generator) for t in targets)

    def reads(self) -> dict[Reads, range]:
        return {Reads.layer_input: range(self.shape.num_layers)} if self.per_token else {}

    def scores(self, ids: torch.Tensor, positions: torch.Tensor, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        seed = self.point.seed
        heads = hashed_uniform(seed, ids, positions, layer, self.shape.num_heads)
        return heads, hashed_uniform(seed, ids, positions, layer, self.shape.num_neurons, _NEURON_OFFSET)

    def start(self, inputs: ForwardInputs) -> None:
        if self.per_token:
            return
        ids = inputs.at_chosen(inputs.ids)
        positions = inputs.at_chosen(inputs.positions)
        per_layer = [self.scores(ids, positions, layer) for layer in range(self.shape.num_layers)]
        heads = torch.cat([h for h, _ in per_layer], 1)
        neurons = torch.cat([n for _, n in per_layer], 1)
        self.set_all(*self.predictor.masks(heads, neurons))

    def read(self, where: Reads, layer: int, x: torch.Tensor) -> None:
        inputs = self.point.inputs
        self.set_layer_scores(layer, *self.scores(inputs.ids, inputs.positions, layer))
