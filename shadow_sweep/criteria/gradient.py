"""Gradient-informed criteria. With a multiplicative mask m_u on unit u placed at 1,
dL/dm_u = sum_t <a_{t,u}, g_{t,u}>, so SNIP and Fisher are mask sensitivities.

plainact  (ShadowLLM)            sum_t | <a_{t,u}, g_{t,u}> |
snip      (Lee et al. 2019)      | sum_t <a_{t,u}, g_{t,u}> |           = |dL/dm_u|
fisher    (Theis et al. 2018;    1/2 (sum_t <a_{t,u}, g_{t,u}>)^2       = 1/2 (dL/dm_u)^2
           Turner et al. 2020)
grad_norm (Abdelfattah et al.    sqrt(sum_{t,d} g_{t,u,d}^2)            = ||dL/da_u||_F
           2021)
grasp     (Wang et al. 2020)     - sum_{t,d} a_{t,u,d} (H g)_{t,u,d}     (activation as parameter)
Sums over t run over real tokens only; <.,.> is over the unit's k dimensions.
"""

import torch

from shadow_sweep.criteria.units import UnitTensors


def mask_gradient_per_token(x: UnitTensors) -> torch.Tensor:
    """<a_t, g_t> per token and unit, [B, T, U]: dL/dm_{t,u} for a per-token mask."""
    return (x.a * x.g * x.token_weights).sum(-1)


def plainact(x: UnitTensors) -> torch.Tensor:
    return mask_gradient_per_token(x).abs().sum(1)


def snip(x: UnitTensors) -> torch.Tensor:
    return mask_gradient_per_token(x).sum(1).abs()


def fisher(x: UnitTensors) -> torch.Tensor:
    return 0.5 * mask_gradient_per_token(x).sum(1).square()


def grad_norm(x: UnitTensors) -> torch.Tensor:
    return (x.g * x.token_weights).square().sum((1, 3)).sqrt()


def grasp(x: UnitTensors) -> torch.Tensor:
    return -(x.a * x.hg * x.token_weights).sum((1, 3))
