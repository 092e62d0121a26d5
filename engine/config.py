"""A Llama-family model's shape, read from a Hugging Face config.json.

Torch-free on purpose: the router imports this to learn the context length and the EOS ids.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kv_transfer.pages import KVLayout

# Decoders that are Llama-shaped up to the two flags below (SmolLM converts to "llama").
_SUPPORTED_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3"})
# Model types whose q/k/v projections carry a bias even when config.json does not say so.
_QKV_BIAS_MODEL_TYPES = frozenset({"qwen2"})
# Model types with a per-head RMSNorm on q and k before rotary (q_norm, k_norm).
_QK_NORM_MODEL_TYPES = frozenset({"qwen3"})
_DEFAULT_ROPE_TYPES = frozenset({None, "default"})


@dataclass(frozen=True, slots=True)
class ModelConfig:
    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    max_position_embeddings: int  # the longest context (prompt + output) the model serves
    tie_word_embeddings: bool
    attention_bias: bool  # q/k/v projections have a bias (Qwen2)
    qk_norm: bool  # per-head RMSNorm of q and k over head_dim, before rotary (Qwen3)
    eos_token_ids: tuple[int, ...]
    bos_token_id: int | None

    @classmethod
    def from_dir(cls, model_dir: Path) -> ModelConfig:
        """Reads config.json and, when present, generation_config.json (its EOS ids win)."""
        config = _read_json(Path(model_dir) / "config.json")
        generation_path = Path(model_dir) / "generation_config.json"
        generation = _read_json(generation_path) if generation_path.exists() else {}
        return cls.from_hf(config, generation)

    @classmethod
    def from_hf(cls, config: dict[str, Any], generation: dict[str, Any]) -> ModelConfig:
        """Builds from the parsed JSON; raises ValueError for features this engine lacks."""
        _check_supported(config)
        model_type = config.get("model_type", "llama")
        num_heads = config["num_attention_heads"]
        return cls(
            model_type=model_type,
            vocab_size=config["vocab_size"],
            hidden_size=config["hidden_size"],
            intermediate_size=config["intermediate_size"],
            num_layers=config["num_hidden_layers"],
            num_heads=num_heads,
            num_kv_heads=config.get("num_key_value_heads") or num_heads,
            head_dim=config.get("head_dim") or config["hidden_size"] // num_heads,
            rms_norm_eps=config.get("rms_norm_eps", 1e-6),
            rope_theta=_rope_theta(config),
            max_position_embeddings=_max_context_len(config),
            tie_word_embeddings=config.get("tie_word_embeddings", False),
            attention_bias=config.get("attention_bias", model_type in _QKV_BIAS_MODEL_TYPES),
            qk_norm=model_type in _QK_NORM_MODEL_TYPES,
            eos_token_ids=_eos_token_ids(generation, config),
            bos_token_id=generation.get("bos_token_id", config.get("bos_token_id")),
        )

    def kv_layout(self, page_size: int, dtype: str) -> KVLayout:
        return KVLayout(self.num_layers, self.num_kv_heads, self.head_dim, page_size, dtype)

    def kv_bytes_per_token(self, dtype: str) -> int:
        """K and V of one token across all layers."""
        return self.kv_layout(1, dtype).page_nbytes


def _read_json(path: Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _rope_parameters(config: dict[str, Any]) -> dict[str, Any]:
    # transformers 5.x writes `rope_parameters`; older configs use rope_theta + rope_scaling.
    return config.get("rope_parameters") or config.get("rope_scaling") or {}


def _rope_theta(config: dict[str, Any]) -> float:
    return float(_rope_parameters(config).get("rope_theta", config.get("rope_theta", 10000.0)))


def _max_context_len(config: dict[str, Any]) -> int:
    # No sliding-window attention here: serve only contexts that fit in the window (Mistral
    # v0.1), where full attention is exact.
    window = config.get("sliding_window") if config.get("use_sliding_window", True) else None
    return min(config["max_position_embeddings"], window or config["max_position_embeddings"])


def _check_supported(config: dict[str, Any]) -> None:
    model_type = config.get("model_type", "llama")
    if model_type not in _SUPPORTED_MODEL_TYPES:
        supported = ", ".join(sorted(_SUPPORTED_MODEL_TYPES))
        raise ValueError(f"config.json: model_type {model_type!r} is not supported ({supported})")
    rope = _rope_parameters(config)
    rope_type = rope.get("rope_type", rope.get("type"))
    if rope_type not in _DEFAULT_ROPE_TYPES:
        raise ValueError(f"config.json: rope type {rope_type!r} is not supported (only default)")
    if config.get("mlp_bias"):
        raise ValueError("config.json: mlp_bias=true is not supported")


def _eos_token_ids(generation: dict[str, Any], config: dict[str, Any]) -> tuple[int, ...]:
    """Union of both files' EOS ids, generation_config.json's first (HF generate uses those)."""
    ids: list[int] = []
    for source in (generation, config):
        value = source.get("eos_token_id")
        ids.extend(value if isinstance(value, list) else [] if value is None else [value])
    return tuple(dict.fromkeys(ids))
