"""Criteria that read activations only: no backward pass is run for them.

l2_norm (DejaVu's magnitude)   sqrt(sum_{t,d} a_{t,u,d}^2); per token ||a_{t,u}||
nwot    (Mellor et al. 2021,   log det(I + K_u),  K_u[t, s] = <c_t, c_s> + <1 - c_t, 1 - c_s>,
         NASWOT)               c_t = 1[a_{t,u} > 0] in {0,1}^k over the real tokens t.
NASWOT scores the Hamming-similarity kernel of binary activation codes across inputs;
here the inputs are the tokens of one example. K_u is singular whenever two tokens share
a code (always for scalar neurons past two tokens), so the identity is added; by
Sylvester's identity log det(I_T + Z Z^T) = log det(I_2k + Z^T Z) with Z = [c, 1 - c],
which is what is computed. For a neuron: log(1 + n_pos) + log(1 + n_nonpos), largest
when the neuron fires on half of the tokens (the original code ranked this backwards).
"""

import torch

from shadow_sweep.criteria.units import UnitTensors


def l2_norm(x: UnitTensors) -> torch.Tensor:
    return (x.a * x.token_weights).square().sum((1, 3)).sqrt()


def l2_norm_per_token(x: UnitTensors) -> torch.Tensor:
    """||a_t|| per token and unit, [B, T, U] (a neuron: |a_t|)."""
    return (x.a * x.token_weights).square().sum(3).sqrt()


def nwot(x: UnitTensors) -> torch.Tensor:
    weights = x.token_weights
    codes = torch.cat([(x.a > 0).to(x.a.dtype) * weights, (x.a <= 0).to(x.a.dtype) * weights], dim=-1)
    gram = torch.einsum("btuk,btul->bukl", codes, codes)  # [B, U, 2k, 2k]
    eye = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
    return torch.linalg.cholesky(gram + eye).diagonal(dim1=-2, dim2=-1).log().sum(-1) * 2.0
