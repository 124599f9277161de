"""Architecture adapters: where the two tensors of every decoder layer live.

Every head/neuron feature goes through two module inputs per decoder layer:
- head context: input of the attention output projection, [B, T, H*d];
- neuron activation: input of the MLP down projection, [B, T, I].
Selectors at a linear's input also read the attention input (of q, k, v: [B, T, D]), the MLP
input (of gate and up, or fc1: [B, T, D]) and the gate projection's output [B, T, I].
An adapter only names those modules and the config attributes giving the sizes, so a
new family is one more entry in `ADAPTERS`, not a subclass.
"""

from dataclasses import dataclass
from typing import Optional

from torch import nn
from transformers import PretrainedConfig


@dataclass(frozen=True)
class ModelShape:
    """Sizes of the structures that masks, criteria and predictors index."""

    num_layers: int
    num_heads: int  # query heads H
    num_kv_heads: int  # K/V heads (H under MHA, fewer under GQA/MQA)
    head_dim: int  # d
    num_neurons: int  # I, FFN width
    hidden_size: int

    @property
    def queries_per_kv(self) -> int:
        return self.num_heads // self.num_kv_heads


@dataclass(frozen=True)
class ArchitectureAdapter:
    family: str
    model_types: tuple[str, ...]  # HF `config.model_type` values this adapter serves
    layers: str  # dotted path from the CausalLM to the ModuleList of decoder layers
    head_context: str  # dotted path inside a layer to the output projection
    neuron_activation: str  # dotted path inside a layer to the down projection
    neurons_attr: str  # config attribute holding I
    attention_inputs: tuple[str, ...]  # q, k, v projections (they read the same input)
    mlp_inputs: tuple[str, ...]  # the MLP's input projections: gate and up, or fc1
    gate: Optional[str] = None  # the gate projection of a gated MLP (None: not gated)
    activation: Optional[str] = None  # the module applying the gate's activation
    kv_heads_attr: Optional[str] = None  # None: as many K/V heads as query heads
    head_dim_attr: Optional[str] = None  # None: hidden_size // num_attention_heads

    def shape(self, config: PretrainedConfig) -> ModelShape:
        heads = config.num_attention_heads
        head_dim = getattr(config, self.head_dim_attr, None) if self.head_dim_attr else None
        return ModelShape(
            num_layers=config.num_hidden_layers,
            num_heads=heads,
            num_kv_heads=getattr(config, self.kv_heads_attr) if self.kv_heads_attr else heads,
            head_dim=head_dim or config.hidden_size // heads,
            num_neurons=getattr(config, self.neurons_attr),
            hidden_size=config.hidden_size,
        )

    def decoder_layers(self, model: nn.Module) -> nn.ModuleList:
        return model.get_submodule(self.layers)

    def head_context_modules(self, model: nn.Module) -> list[nn.Module]:
        return [layer.get_submodule(self.head_context) for layer in self.decoder_layers(model)]

    def neuron_activation_modules(self, model: nn.Module) -> list[nn.Module]:
        return [layer.get_submodule(self.neuron_activation) for layer in self.decoder_layers(model)]

    def attention_input_modules(self, model: nn.Module) -> list[list[nn.Module]]:
        """Per layer, the q, k and v projections."""
        return [[layer.get_submodule(p) for p in self.attention_inputs] for layer in self.decoder_layers(model)]

    def mlp_input_modules(self, model: nn.Module) -> list[list[nn.Module]]:
        """Per layer, the MLP's input projections (gate and up, or fc1)."""
        return [[layer.get_submodule(p) for p in self.mlp_inputs] for layer in self.decoder_layers(model)]

    def gate_modules(self, model: nn.Module) -> Optional[list[tuple[nn.Module, nn.Module]]]:
        """Per layer, (gate projection, its activation), or None for an MLP without a gate."""
        if self.gate is None:
            return None
        return [(layer.get_submodule(self.gate), layer.get_submodule(self.activation))
                for layer in self.decoder_layers(model)]


_LLAMA_LIKE = dict(
    layers="model.layers",
    head_context="self_attn.o_proj",
    neuron_activation="mlp.down_proj",
    neurons_attr="intermediate_size",
    attention_inputs=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    mlp_inputs=("mlp.gate_proj", "mlp.up_proj"),
    gate="mlp.gate_proj",
    activation="mlp.act_fn",
    kv_heads_attr="num_key_value_heads",
    head_dim_attr="head_dim",
)

ADAPTERS: tuple[ArchitectureAdapter, ...] = (
    ArchitectureAdapter(
        family="opt",
        model_types=("opt",),
        layers="model.decoder.layers",
        head_context="self_attn.out_proj",
        neuron_activation="fc2",
        neurons_attr="ffn_dim",
        attention_inputs=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
        mlp_inputs=("fc1",),
    ),
    ArchitectureAdapter(family="llama", model_types=("llama", "mistral", "qwen2", "qwen3"), **_LLAMA_LIKE),
    ArchitectureAdapter(family="gemma3", model_types=("gemma3_text",), **_LLAMA_LIKE),
)


class UnsupportedArchitectureError(ValueError):
    pass


def supported_model_types() -> list[str]:
    return sorted(t for adapter in ADAPTERS for t in adapter.model_types)


def adapter_for(config: PretrainedConfig) -> ArchitectureAdapter:
    """The adapter serving `config.model_type`, or an error listing the supported ones."""
    for adapter in ADAPTERS:
        if config.model_type in adapter.model_types:
            return adapter
    raise UnsupportedArchitectureError(
        f"architecture {config.model_type!r} is not supported; supported model types: "
        f"{', '.join(supported_model_types())}. Add an entry to "
        "shadow_sweep.models.adapters.ADAPTERS to support it."
    )
