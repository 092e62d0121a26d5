"""Seeded random-weight checkpoints in Hugging Face layout (engine/weights.py writes them).

`tiny` (fast tests): a 2-layer Llama in float32, weights scaled to keep activations O(1) and
logits spread, so greedy argmax is stable across implementations.

`<model>-shape` (GPU benchmarks, whose throughput does not depend on weight values): a real
model's config.json with bfloat16 weights drawn like an untrained checkpoint (std 0.02, norms
1), so logits stay finite. No tokenizer: benchmarks feed token ids.

Torch is imported inside the functions: the router imports engine.weights, which imports this
module, and must stay torch-free.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from engine.config import ModelConfig

if TYPE_CHECKING:
    import torch

SEED = 1234
_SHAPE_INIT_STD = 0.02  # transformers' initializer_range for both Qwen models

# Shapes of the "tiny" preset; vocabulary and special tokens come from SmolLM2.
TINY_CONFIG: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "max_position_embeddings": 2048,
    "rope_theta": 10000.0,
    "rms_norm_eps": 1e-5,
    "hidden_act": "silu",
    "tie_word_embeddings": True,
}

# The published config.json of each model, less fields neither this engine nor HF reads.
_QWEN_COMMON: dict[str, Any] = {
    "vocab_size": 151936,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "hidden_act": "silu",
    "rope_theta": 1000000.0,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True,
    "use_sliding_window": False,
    "dtype": "bfloat16",
}
SHAPE_CONFIGS: dict[str, dict[str, Any]] = {
    "qwen2.5-0.5b-shape": {
        **_QWEN_COMMON,
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",  # q/k/v projections with bias
        "hidden_size": 896,
        "intermediate_size": 4864,
        "num_hidden_layers": 24,
        "num_attention_heads": 14,
        "num_key_value_heads": 2,  # head_dim 896 / 14 = 64
        "max_position_embeddings": 32768,
    },
    "qwen3-0.6b-shape": {
        **_QWEN_COMMON,
        "architectures": ["Qwen3ForCausalLM"],
        "model_type": "qwen3",  # q/k norm, no bias
        "attention_bias": False,
        "hidden_size": 1024,
        "intermediate_size": 3072,
        "num_hidden_layers": 28,
        "num_attention_heads": 16,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "max_position_embeddings": 40960,
    },
}


@dataclass(frozen=True, slots=True)
class _Init:
    """How each kind of tensor is drawn; every call advances one shared seeded generator."""

    embed: Callable[[int, int], torch.Tensor]  # (vocab_size, hidden_size)
    linear: Callable[[int, int], torch.Tensor]  # (out_features, in_features)
    bias: Callable[[int], torch.Tensor]
    norm: Callable[[int], torch.Tensor]


def tiny_tensors(config: ModelConfig) -> dict[str, torch.Tensor]:
    """float32: embeddings N(0, 1), linears N(0, 1 / in_features), norms 1 + N(0, 0.01)."""
    import torch

    generator = torch.Generator().manual_seed(SEED)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator)

    def linear(out_features: int, in_features: int) -> torch.Tensor:
        return randn(out_features, in_features) / in_features**0.5

    def norm(size: int) -> torch.Tensor:
        return 1.0 + 0.1 * randn(size)

    return _checkpoint(config, _Init(embed=randn, linear=linear, bias=randn, norm=norm))


def shape_tensors(config: ModelConfig) -> dict[str, torch.Tensor]:
    """bfloat16, drawn directly in it: every matrix and bias N(0, 0.02²), norms exactly 1."""
    import torch

    generator = torch.Generator().manual_seed(SEED)

    def normal(*shape: int) -> torch.Tensor:
        out = torch.empty(*shape, dtype=torch.bfloat16)
        return out.normal_(0.0, _SHAPE_INIT_STD, generator=generator)

    def ones(size: int) -> torch.Tensor:
        return torch.ones(size, dtype=torch.bfloat16)

    return _checkpoint(config, _Init(embed=normal, linear=normal, bias=normal, norm=ones))


def _checkpoint(config: ModelConfig, init: _Init) -> dict[str, torch.Tensor]:
    """Every tensor of the HF checkpoint, drawn in a fixed order (the tiny preset's outputs
    are pinned by tests: new kinds of tensor are drawn after the ones it has)."""
    hidden = config.hidden_size
    tensors = {"model.embed_tokens.weight": init.embed(config.vocab_size, hidden)}
    for i in range(config.num_layers):
        tensors |= _layer_tensors(config, f"model.layers.{i}.", init)
    tensors["model.norm.weight"] = init.norm(hidden)
    if not config.tie_word_embeddings:
        tensors["lm_head.weight"] = init.linear(config.vocab_size, hidden)
    return tensors


def _layer_tensors(config: ModelConfig, prefix: str, init: _Init) -> dict[str, torch.Tensor]:
    hidden, inner = config.hidden_size, config.intermediate_size
    q_size, kv_size = config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim
    attn, mlp = prefix + "self_attn.", prefix + "mlp."
    tensors = {
        attn + "q_proj.weight": init.linear(q_size, hidden),
        attn + "k_proj.weight": init.linear(kv_size, hidden),
        attn + "v_proj.weight": init.linear(kv_size, hidden),
        attn + "o_proj.weight": init.linear(hidden, q_size),
        mlp + "gate_proj.weight": init.linear(inner, hidden),
        mlp + "up_proj.weight": init.linear(inner, hidden),
        mlp + "down_proj.weight": init.linear(hidden, inner),
        prefix + "input_layernorm.weight": init.norm(hidden),
        prefix + "post_attention_layernorm.weight": init.norm(hidden),
    }
    if config.attention_bias:
        for name, size in (("q_proj", q_size), ("k_proj", kv_size), ("v_proj", kv_size)):
            tensors[f"{attn}{name}.bias"] = init.bias(size)
    if config.qk_norm:
        tensors[attn + "q_norm.weight"] = init.norm(config.head_dim)
        tensors[attn + "k_norm.weight"] = init.norm(config.head_dim)
    return tensors
