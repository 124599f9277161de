"""Predictor networks as G independent MLPs evaluated together (G = 1 for ShadowLLM, one per
predicted layer for DejaVu):  x [N, G, in] -> ReLU(x W1 + b1) ... -> [N, G, out].

Layers: in -> width (ReLU) -> (depth - 1) x [width -> width (ReLU)] -> bottleneck r (linear,
no activation: a rank-r factorisation of the output layer) -> out; r = 0 means width -> out.
Multiply-adds per application: in*w + (depth-1)*w^2 + (w*r + r*out if r else w*out), per group.
"""

import math
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class MLPShape:
    groups: int
    inputs: int
    width: int
    depth: int
    bottleneck: int  # 0: none
    outputs: int

    def layer_sizes(self) -> list[tuple[int, int]]:
        sizes = [(self.inputs, self.width)] + [(self.width, self.width)] * (self.depth - 1)
        if self.bottleneck:
            return sizes + [(self.width, self.bottleneck), (self.bottleneck, self.outputs)]
        return sizes + [(self.width, self.outputs)]

    @property
    def macs_per_group(self) -> int:
        return sum(a * b for a, b in self.layer_sizes())

    @property
    def parameters(self) -> int:
        return self.groups * sum(a * b + b for a, b in self.layer_sizes())

    def bytes_for(self, outputs: int, element_size: int) -> int:
        """Bytes of the weights and biases one application reads when only `outputs` columns of
        the output layer are computed (every group: the trunk, then (r + 1) per column)."""
        *trunk, (last_in, _) = self.layer_sizes()
        return self.groups * (sum(a * b + b for a, b in trunk) + (last_in + 1) * outputs) * element_size


class GroupedMLP(nn.Module):
    def __init__(self, shape: MLPShape):
        super().__init__()
        self.shape = shape
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for fan_in, fan_out in shape.layer_sizes():
            bound = 1.0 / math.sqrt(fan_in)  # nn.Linear's default init
            self.weights.append(nn.Parameter(torch.empty(shape.groups, fan_in, fan_out).uniform_(-bound, bound)))
            self.biases.append(nn.Parameter(torch.empty(shape.groups, fan_out).uniform_(-bound, bound)))
        # ReLU after each hidden layer; none after the bottleneck or the output layer
        self.activated = [True] * shape.depth + [False] * (len(self.weights) - shape.depth)

    def forward(self, x: torch.Tensor, group: slice = slice(None)) -> torch.Tensor:
        """x [N, g, in] for the groups selected by `group` -> [N, g, out]."""
        return self.output(self.trunk(x, group), group)

    def trunk(self, x: torch.Tensor, group: slice = slice(None)) -> torch.Tensor:
        """Every layer but the output layer: x [N, g, in] -> [N, g, r] (r: bottleneck or width)."""
        for weight, bias, relu in zip(self.weights[:-1], self.biases[:-1], self.activated[:-1]):
            x = torch.einsum("ngi,gio->ngo", x, weight[group]) + bias[group]
            x = torch.relu(x) if relu else x
        return x

    def output(self, z: torch.Tensor, group: slice = slice(None), columns: slice = slice(None)) -> torch.Tensor:
        """The output layer on trunk features z [N, g, r], only `columns` of it -> [N, g, |columns|]
        (a ShadowLLM network's one layer at a time, without the others' outputs)."""
        weight = self.weights[-1][group][..., columns]
        return torch.einsum("ngi,gio->ngo", z, weight) + self.biases[-1][group][..., columns]

    def one_row(self, x: torch.Tensor, group: int, vector_matrix) -> torch.Tensor:
        """One input x [in] through group `group` -> [out]; each layer's product by
        vector_matrix(x [in], W [in, out]) (a decode kernel for one token, no einsum)."""
        for weight, bias, relu in zip(self.weights, self.biases, self.activated):
            x = vector_matrix(x, weight[group]) + bias[group]
            x = torch.relu(x) if relu else x
        return x
