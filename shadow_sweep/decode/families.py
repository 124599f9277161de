"""What differs between architecture families in the decode loop (all else is shared):
embeddings and positions, norms, rotary or learned positions, the MLP's activation, the
head that turns the last hidden state into logits. Norms, rotary embeddings and activations
are the HF modules' own, so numerics match the masked dense path."""

import torch
from torch import nn
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from shadow_sweep.decode.weights import LayerWeights

DECODE_FAMILIES = ("llama", "opt")


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
        self.scale = model.config.head_dim ** -0.5 if getattr(model.config, "head_dim", None) else \
            (model.config.hidden_size // model.config.num_attention_heads) ** -0.5

    def weights(self, layer: nn.Module) -> LayerWeights:
        a, m = layer.self_attn, layer.mlp
        return LayerWeights(q=_rows(a.q_proj), k=_rows(a.k_proj), v=_rows(a.v_proj), o=_cols(a.o_proj),
                            up=_rows(m.up_proj), gate=_rows(m.gate_proj), down=_cols(m.down_proj),
                            q_bias=_bias(a.q_proj), k_bias=_bias(a.k_proj), v_bias=_bias(a.v_proj),
                            o_bias=_bias(a.o_proj), up_bias=_bias(m.up_proj), down_bias=_bias(m.down_proj))

    def embed(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.base.embed_tokens(ids)

    def attention_input(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return layer.input_layernorm(x)

    def position_queries_keys(self, q, k, positions, x):
        """q [1, nq, T, d], k [1, nk, T, d] -> rotated."""
        cos, sin = self.base.rotary_emb(x, positions[None])
        return apply_rotary_pos_emb(q, k, cos, sin)

    def mlp_input(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return layer.post_attention_layernorm(x)

    def activation(self, layer: nn.Module, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        return layer.mlp.act_fn(gate) * up

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.base.norm(x))


class OPTFamily:
    """OPT (pre-LayerNorm): learned positions, ReLU MLP, biases."""

    def __init__(self, model: nn.Module):
        if not model.config.do_layer_norm_before:
            raise ValueError("the sparse decode path supports pre-LayerNorm OPT models (all but opt-350m)")
        self.decoder, self.lm_head = model.model.decoder, model.lm_head
        self.scale = (model.config.hidden_size // model.config.num_attention_heads) ** -0.5

    def weights(self, layer: nn.Module) -> LayerWeights:
        a = layer.self_attn
        return LayerWeights(q=_rows(a.q_proj), k=_rows(a.k_proj), v=_rows(a.v_proj), o=_cols(a.out_proj),
                            up=_rows(layer.fc1), down=_cols(layer.fc2), q_bias=_bias(a.q_proj),
                            k_bias=_bias(a.k_proj), v_bias=_bias(a.v_proj), o_bias=_bias(a.out_proj),
                            up_bias=_bias(layer.fc1), down_bias=_bias(layer.fc2))

    def embed(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        x = self.decoder.embed_tokens(ids)
        if self.decoder.project_in is not None:
            x = self.decoder.project_in(x)
        return x + self.decoder.embed_positions(None, 0, position_ids=positions[None])[0]

    def attention_input(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return layer.self_attn_layer_norm(x)

    def position_queries_keys(self, q, k, positions, x):
        return q, k

    def mlp_input(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return layer.final_layer_norm(x)

    def activation(self, layer: nn.Module, gate, up: torch.Tensor) -> torch.Tensor:
        return layer.activation_fn(up)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        if self.decoder.final_layer_norm is not None:
            x = self.decoder.final_layer_norm(x)
        if self.decoder.project_out is not None:
            x = self.decoder.project_out(x)
        return self.lm_head(x)
