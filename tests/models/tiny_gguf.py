"""A tiny random Llama written as a GGUF file, the way llama.cpp's converter lays it out:
llama.cpp tensor names, q/k rows permuted for its rotary layout, F32 tensors, and a byte-level
BPE tokenizer (the 256 byte symbols, one merge, an end-of-text token)."""

from pathlib import Path

import numpy as np
import torch
from gguf import GGMLQuantizationType, GGUFWriter, TokenType, quants
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.convert_slow_tokenizer import bytes_to_unicode

MERGE = ("Ġ", "t")
EOS = "<|endoftext|>"


def byte_level_tokens() -> list[str]:
    return [*bytes_to_unicode().values(), "".join(MERGE), EOS]


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    config = LlamaConfig(vocab_size=len(byte_level_tokens()), hidden_size=64, intermediate_size=96,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                         max_position_embeddings=256, rms_norm_eps=1e-5, rope_theta=10000.0,
                         tie_word_embeddings=False)
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


def _rotary_permute(weight: np.ndarray, heads: int) -> np.ndarray:
    """HF's rotate-half rows to llama.cpp's interleaved pairs (inverse of transformers' load)."""
    rows = weight.shape[0]
    return weight.reshape(heads, 2, rows // heads // 2, -1).swapaxes(1, 2).reshape(weight.shape)


def write_tiny_llama_gguf(model: LlamaForCausalLM, path: Path, architecture: str = "llama",
                          quantised: dict[str, GGMLQuantizationType] = None) -> Path:
    """`quantised`: GGUF tensor names -> a ggml type to store them in (gguf's own quantiser)."""
    quantised = quantised or {}
    config = model.config
    writer = GGUFWriter(str(path), architecture)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(config.head_dim)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    tokens = byte_level_tokens()
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([TokenType.NORMAL] * (len(tokens) - 1) + [TokenType.CONTROL])
    writer.add_token_merges([" ".join(MERGE)])
    writer.add_eos_token_id(len(tokens) - 1)
    writer.add_bos_token_id(len(tokens) - 1)
    writer.add_add_bos_token(False)
    state = {name: tensor.detach().numpy().astype(np.float32) for name, tensor in model.state_dict().items()}
    writer.add_tensor("token_embd.weight", state["model.embed_tokens.weight"])
    writer.add_tensor("output_norm.weight", state["model.norm.weight"])
    writer.add_tensor("output.weight", state["lm_head.weight"])
    names = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
             "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    for layer in range(config.num_hidden_layers):
        for hf_name, gguf_name in names.items():
            weight = state[f"model.layers.{layer}.{hf_name}.weight"]
            if gguf_name == "attn_q":
                weight = _rotary_permute(weight, config.num_attention_heads)
            if gguf_name == "attn_k":
                weight = _rotary_permute(weight, config.num_key_value_heads)
            name = f"blk.{layer}.{gguf_name}.weight"
            if name in quantised:
                blocks = quants.quantize(weight, quantised[name])
                writer.add_tensor(name, blocks, raw_shape=blocks.shape, raw_dtype=quantised[name])
            else:
                writer.add_tensor(name, weight)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
