"""What differs between architecture families in the decode loop (all else is shared):
embeddings and positions, norms, rotary or learned positions, the MLP's activation, the
head that turns the last hidden state into logits. Norms, rotary embeddings and activations
are the HF modules' own, so numerics match the masked dense path."""

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from shadow_sweep.decode.weights import LayerWeights, neuron_major

DECODE_FAMILIES = ("llama", "opt")
ACTIVATIONS = {"silu": 0, "swish": 0, "relu": 1, "gelu": 2, "gelu_new": 3, "gelu_pytorch_tanh": 3}
"""Activation names (config.hidden_act / activation_function) -> the C++ decode_layers' codes."""
RMS_NORM = 0
LAYER_NORM = 1


@dataclass(frozen=True)
class LayerNorms:
    """What the C++ decode_layers needs besides the weights: both norms' parameters (weight,
    bias or None, attention norm first), their kind and epsilon, the activation's code."""

    tensors: list
    eps: float
    kind: int
    activation: int


def layer_norms(attention: nn.Module, mlp: nn.Module, kind: int, activation: str) -> Optional[LayerNorms]:
    """LayerNorms for a layer, or None when the C++ layer cannot run it (an activation it lacks,
    two different epsilons): that layer then runs in torch ops."""
    eps = [getattr(norm, "variance_epsilon", getattr(norm, "eps", None)) for norm in (attention, mlp)]
    if activation not in ACTIVATIONS or eps[0] != eps[1] or eps[0] is None:
        return None
    tensors = [t if t is None else t.detach() for norm in (attention, mlp) for t in (norm.weight, norm.bias)] \
        if kind == LAYER_NORM else [attention.weight.detach(), None, mlp.weight.detach(), None]
    return LayerNorms(tensors, float(eps[0]), kind, ACTIVATIONS[activation])


def _rows(linear: nn.Linear) -> torch.Tensor:
    return linear.weight.detach().contiguous()


def _cols(linear: nn.Linear) -> torch.Tensor:
    return linear.weight.detach().t().contiguous()


def _bias(linear: nn.Linear):
    return None if linear.bias is None else linear.bias.detach()


class LlamaFamily:
    """Llama / Mistral / Qwen2: RMSNorm, rotary positions, gated SiLU MLP, no biases (Qwen2: q/k/v)."""

    def __init__(self, model: nn.Module):
        self.base, self.lm_head = model.model, model.lm_head
        self.activation_name = model.config.hidden_act
        self.scale = model.config.head_dim ** -0.5 if getattr(model.config, "head_dim", None) else \
            (model.config.hidden_size // model.config.num_attention_heads) ** -0.5

    def weights(self, layer: nn.Module) -> LayerWeights:
        a, m = layer.self_attn, layer.mlp
        return LayerWeights(q=_rows(a.q_proj), k=_rows(a.k_proj), v=_rows(a.v_proj), o=_cols(a.o_proj),
                            mlp=neuron_major(_rows(m.up_proj), _rows(m.gate_proj), _cols(m.down_proj)),
                            q_bias=_bias(a.q_proj), k_bias=_bias(a.k_proj), v_bias=_bias(a.v_proj),
                            o_bias=_bias(a.o_proj), up_bias=_bias(m.up_proj), down_bias=_bias(m.down_proj))

    def norms(self, layer: nn.Module) -> Optional[LayerNorms]:
        return layer_norms(layer.input_layernorm, layer.post_attention_layernorm, RMS_NORM, self.activation_name)

    def embed(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.base.embed_tokens(ids)

    def attention_input(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return layer.input_layernorm(x)

    def rotation(self, positions: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [1, T, d] at these positions: computed once per step, shared by every layer."""
        return self.base.rotary_emb(x[None], positions[None])

    def position_queries_keys(self, q, k, rotation):
        """q [1, nq, T, d], k [1, nk, T, d] -> rotated."""
        return apply_rotary_pos_emb(q, k, *rotation)

    def mlp_input(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return layer.post_attention_layernorm(x)

    def activation(self, layer: nn.Module, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        return layer.mlp.act_fn(gate) * up

    def gate_activation(self, layer: nn.Module, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        """What a selection at the gate scores: act(gate)."""
        return layer.mlp.act_fn(gate)

    def final_hidden(self, x: torch.Tensor) -> torch.Tensor:
        """The last layer's output -> lm_head's input."""
        return self.base.norm(x)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.final_hidden(x))


class OPTFamily:
    """OPT (pre-LayerNorm): learned positions, ReLU MLP, biases."""

    def __init__(self, model: nn.Module):
        if not model.config.do_layer_norm_before:
            raise ValueError("the sparse decode path supports pre-LayerNorm OPT models (all but opt-350m)")
        self.decoder, self.lm_head = model.model.decoder, model.lm_head
        self.activation_name = model.config.activation_function
        self.scale = (model.config.hidden_size // model.config.num_attention_heads) ** -0.5

    def weights(self, layer: nn.Module) -> LayerWeights:
        a = layer.self_attn
        return LayerWeights(q=_rows(a.q_proj), k=_rows(a.k_proj), v=_rows(a.v_proj), o=_cols(a.out_proj),
                            mlp=neuron_major(_rows(layer.fc1), None, _cols(layer.fc2)), q_bias=_bias(a.q_proj),
                            k_bias=_bias(a.k_proj), v_bias=_bias(a.v_proj), o_bias=_bias(a.out_proj),
                            up_bias=_bias(layer.fc1), down_bias=_bias(layer.fc2))

    def norms(self, layer: nn.Module) -> Optional[LayerNorms]:
        return layer_norms(layer.self_attn_layer_norm, layer.final_layer_norm, LAYER_NORM, self.activation_name)

    def embed(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        x = self.decoder.embed_tokens(ids)
        if self.decoder.project_in is not None:
            x = self.decoder.project_in(x)
        return x + self.decoder.embed_positions(None, 0, position_ids=positions[None])[0]

    def attention_input(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return layer.self_attn_layer_norm(x)

    def rotation(self, positions: torch.Tensor, x: torch.Tensor) -> None:
        return None  # learned positions, added to the embeddings

    def position_queries_keys(self, q, k, rotation):
        return q, k

    def mlp_input(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return layer.final_layer_norm(x)

    def activation(self, layer: nn.Module, gate, up: torch.Tensor) -> torch.Tensor:
        return layer.activation_fn(up)

    def gate_activation(self, layer: nn.Module, gate, up: torch.Tensor) -> torch.Tensor:
        """What a selection at the gate scores (no gate): the activation of fc1 itself."""
        return layer.activation_fn(up)

    def final_hidden(self, x: torch.Tensor) -> torch.Tensor:
        """The last layer's output -> lm_head's input."""
        if self.decoder.final_layer_norm is not None:
            x = self.decoder.final_layer_norm(x)
        if self.decoder.project_out is not None:
            x = self.decoder.project_out(x)
        return x

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.final_hidden(x))
