"""The criteria by name, with what each needs from the trace collector."""

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from shadow_sweep.config import CriterionConfig
from shadow_sweep.criteria import activation, correlation, gradient
from shadow_sweep.criteria.units import UnitTensors


@dataclass(frozen=True)
class Criterion:
    name: str
    needs_grad: bool
    needs_hvp: bool  # a Hessian-gradient product through double backward
    unit_score: Callable[[UnitTensors, CriterionConfig], torch.Tensor]  # [B, U]
    neurons_in_blocks: bool = False  # needs k > 2 per unit: neurons scored per block
    token_score: Optional[Callable[[UnitTensors], torch.Tensor]] = None  # [B, T, U]; None: no per-token form

    def per_token(self, x: UnitTensors) -> torch.Tensor:
        """Per-token scores [B, T, U] (heads and neurons alike: neurons have k = 1)."""
        if self.token_score is None:
            raise ValueError(f"criterion {self.name!r} has no per-token form; per-token criteria: "
                             f"{', '.join(per_token_criteria())}")
        return self.token_score(x)

    def heads(self, x: UnitTensors, cfg: CriterionConfig) -> torch.Tensor:
        return self.unit_score(x, cfg)

    def neurons(self, x: UnitTensors, cfg: CriterionConfig, head_dim: int) -> torch.Tensor:
        """Neuron scores; block criteria use blocks of criterion.neuron_block (null: head_dim)."""
        if not self.neurons_in_blocks:
            return self.unit_score(x, cfg)
        block = cfg.neuron_block or head_dim
        return self.unit_score(x.blocks(block), cfg).repeat_interleave(block, dim=-1)


def _plain(fn):
    return lambda x, cfg: fn(x)


CRITERIA: dict[str, Criterion] = {c.name: c for c in (
    Criterion("plainact", True, False, _plain(gradient.plainact), token_score=gradient.plainact_per_token),
    Criterion("snip", True, False, _plain(gradient.snip), token_score=gradient.plainact_per_token),
    Criterion("fisher", True, False, _plain(gradient.fisher), token_score=gradient.fisher_per_token),
    Criterion("grad_norm", True, False, _plain(gradient.grad_norm), token_score=gradient.grad_norm_per_token),
    Criterion("grasp", True, True, _plain(gradient.grasp), token_score=gradient.grasp_per_token),
    Criterion("l2_norm", False, False, _plain(activation.l2_norm), token_score=activation.l2_norm_per_token),
    Criterion("nwot", False, False, _plain(activation.nwot)),
    Criterion("jacov", True, False, lambda x, cfg: correlation.jacov(x, cfg.epsilon), neurons_in_blocks=True),
    Criterion("epenas", True, False, lambda x, cfg: correlation.epenas(x, cfg.epsilon, cfg.min_class_size),
              neurons_in_blocks=True),
)}


def per_token_criteria() -> list[str]:
    return [name for name, criterion in CRITERIA.items() if criterion.token_score is not None]


def get_criterion(name: str) -> Criterion:
    if name not in CRITERIA:
        raise ValueError(f"criterion {name!r} is unknown; criteria: {', '.join(CRITERIA)}")
    return CRITERIA[name]
