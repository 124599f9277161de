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

Per-token forms (`*_per_token`, [B, T, U]: the score of unit u for the token at t alone, as
per-token masks need it; g_t from the language-model loss on every real token):
plainact, snip   | <a_t, g_t> |            (snip of a single term is plainact's term)
fisher           1/2 <a_t, g_t>^2
grad_norm        ||g_t||
grasp            - <a_t, (H g)_t>
plainact's and grasp's per-sequence scores are their per-token terms summed over t (tested).
"""

import torch

from shadow_sweep.criteria.units import UnitTensors


def mask_gradient_per_token(x: UnitTensors) -> torch.Tensor:
    """<a_t, g_t> per token and unit, [B, T, U]: dL/dm_{t,u} for a per-token mask."""
    return (x.a * x.g * x.token_weights).sum(-1)


def plainact_per_token(x: UnitTensors) -> torch.Tensor:
    return mask_gradient_per_token(x).abs()


def plainact(x: UnitTensors) -> torch.Tensor:
    return plainact_per_token(x).sum(1)


def snip(x: UnitTensors) -> torch.Tensor:
    return mask_gradient_per_token(x).sum(1).abs()


def fisher(x: UnitTensors) -> torch.Tensor:
    return 0.5 * mask_gradient_per_token(x).sum(1).square()


def fisher_per_token(x: UnitTensors) -> torch.Tensor:
    return 0.5 * mask_gradient_per_token(x).square()


def grad_norm(x: UnitTensors) -> torch.Tensor:
    return (x.g * x.token_weights).square().sum((1, 3)).sqrt()


def grad_norm_per_token(x: UnitTensors) -> torch.Tensor:
    return (x.g * x.token_weights).square().sum(3).sqrt()


def grasp_per_token(x: UnitTensors) -> torch.Tensor:
    return -(x.a * x.hg * x.token_weights).sum(3)


def grasp(x: UnitTensors) -> torch.Tensor:
    return grasp_per_token(x).sum(1)
