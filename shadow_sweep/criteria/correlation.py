"""Criteria on correlations between per-token gradient vectors g_{t,u} in R^k.

jacov  (Mellor et al. 2020, v1)  -sum_i [log(v_i + eps) + 1/(v_i + eps)], v = eigenvalues of
                                  the T x T correlation matrix of the rows g_{t,u}.
epenas (Lopes et al. 2021)       rows grouped by the token each position predicts; per class c
                                  with >= min_class_size rows, s_c = sum_{i,j} log(|C_c[i,j]| + eps)
                                  with C_c their correlation matrix; score = sum_{c<c'} |s_c - s_c'|.
A row's correlation uses the row centred and scaled to unit norm (a zero row stays zero).
The T x T spectrum is that of the k x k matrix R^T R plus max(T - k, 0) zeros; the zero
terms are the same for every unit of an example and are left out (they would only shift
all its scores). Both need k > 2: neurons are scored in blocks of consecutive neurons
(criterion.neuron_block), each neuron taking its block's score.
"""

import torch

from shadow_sweep.criteria.units import UnitTensors


def _unit_rows(g: torch.Tensor) -> torch.Tensor:
    centred = g - g.mean(-1, keepdim=True)
    norm = centred.norm(dim=-1, keepdim=True)
    return torch.where(norm > 0, centred / norm.clamp_min(1e-30), torch.zeros_like(centred))


def jacov(x: UnitTensors, eps: float) -> torch.Tensor:
    """In float64, eigenvalues under 1e-9 of the largest snapped to 0: 1/(v + eps) makes the
    score very sensitive to rounding noise in the (many) zero eigenvalues."""
    rows = _unit_rows(x.g.double()) * x.token_weights.double()  # [B, T, U, k]
    k = rows.shape[-1]
    spectrum = torch.linalg.eigvalsh(torch.einsum("btuk,btul->bukl", rows, rows))  # ascending
    spectrum = torch.where(spectrum > 1e-9 * spectrum[..., -1:].clamp_min(1e-300), spectrum, 0.0)
    kept = x.valid.sum(1).clamp(max=k)  # [B]: non-trivial eigenvalues per example
    take = torch.arange(k, device=rows.device)[None, :] >= (k - kept)[:, None]  # [B, k]
    terms = (spectrum + eps).log() + 1.0 / (spectrum + eps)
    return -(terms * take[:, None, :]).sum(-1).to(x.g.dtype)


def epenas(x: UnitTensors, eps: float, min_class_size: int) -> torch.Tensor:
    rows = _unit_rows(x.g)
    scores = torch.zeros(rows.shape[0], rows.shape[2], dtype=rows.dtype, device=rows.device)
    for b in range(rows.shape[0]):
        targets = torch.where(x.valid[b], x.targets[b], -1)
        classes, counts = targets[targets >= 0].unique(return_counts=True)
        per_class = []
        for c in classes[counts >= min_class_size]:
            members = rows[b, targets == c].transpose(0, 1)  # [U, n_c, k]
            correlation = members @ members.transpose(1, 2)  # [U, n_c, n_c]
            per_class.append((correlation.abs() + eps).log().sum((1, 2)))
        if len(per_class) > 1:
            s = torch.stack(per_class)  # [C, U]
            scores[b] = (s[:, None, :] - s[None, :, :]).abs().sum((0, 1)) / 2.0
    return scores
