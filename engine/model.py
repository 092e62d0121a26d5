"""Llama-family decoder (Llama 2/3, Mistral, Qwen2, SmolLM) over a paged KV cache.

Module and parameter names are Hugging Face's, so an HF state dict loads as is. Each step
mirrors transformers' LlamaForCausalLM (RMSNorm in float32, rotary cos/sin in float32 with
rotate_half, SiLU-gated MLP, residuals in the model dtype) so float32 greedy decoding yields
the same tokens as HF `generate`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from engine.attention.base import AttentionBackend
from engine.batch import ForwardBatch, to_device
from engine.config import ModelConfig

# Old checkpoints carry the rotary table as a buffer; it is recomputed, never loaded.
_DERIVED_KEY_SUFFIXES = ("rotary_emb.inv_freq",)


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float, dtype: torch.dtype) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size, dtype=dtype))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [..., size] (hidden states, or q/k heads for qk-norm); variance in float32, the
        # weight multiply in x.dtype
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * normed.to(x.dtype)


class RotaryEmbedding:
    """HF LlamaRotaryEmbedding (default rope type); the table stays float32 in any model dtype."""

    def __init__(self, head_dim: int, theta: float) -> None:
        exponents = torch.arange(0, head_dim, 2, dtype=torch.int64, device="cpu").float()
        self.inv_freq = 1.0 / (theta ** (exponents / head_dim))  # [head_dim / 2]

    def to(self, device: torch.device) -> None:
        """Keeps the table on the model's device: a step then copies nothing from the host."""
        self.inv_freq = self.inv_freq.to(device)

    def cos_sin(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        # positions: [num_tokens] -> cos, sin: [num_tokens, 1, head_dim] in dtype
        freqs = positions.float()[:, None] * self.inv_freq.to(positions.device)[None, :]
        angles = torch.cat((freqs, freqs), dim=-1)
        return angles.cos().to(dtype)[:, None, :], angles.sin().to(dtype)[:, None, :]


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x: [num_tokens, num_heads, head_dim]; cos, sin: [num_tokens, 1, head_dim]
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return (x * cos) + (rotated * sin)


@dataclass(slots=True)
class StepContext:
    """What every layer of one forward step shares; lives for that step only."""

    attn: AttentionBackend
    kv_cache: torch.Tensor  # [num_pages, num_layers, 2, page_size, num_kv_heads, head_dim]
    metadata: object  # attn.prepare()'s result for this step's batch
    cos: torch.Tensor  # [num_tokens, 1, head_dim]
    sin: torch.Tensor  # [num_tokens, 1, head_dim]


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, layer: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.layer = layer
        self.num_heads, self.num_kv_heads = config.num_heads, config.num_kv_heads
        self.head_dim = config.head_dim
        q_size, kv_size = config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim
        bias = config.attention_bias
        self.q_proj = nn.Linear(config.hidden_size, q_size, bias=bias, dtype=dtype)
        self.k_proj = nn.Linear(config.hidden_size, kv_size, bias=bias, dtype=dtype)
        self.v_proj = nn.Linear(config.hidden_size, kv_size, bias=bias, dtype=dtype)
        self.o_proj = nn.Linear(q_size, config.hidden_size, bias=False, dtype=dtype)
        self.qk_norm = config.qk_norm
        if config.qk_norm:
            self.q_norm = RMSNorm(config.head_dim, config.rms_norm_eps, dtype)
            self.k_norm = RMSNorm(config.head_dim, config.rms_norm_eps, dtype)

    def forward(self, x: torch.Tensor, step: StepContext) -> torch.Tensor:
        # x: [num_tokens, hidden_size]
        num_tokens = x.shape[0]
        q = self.q_proj(x).view(num_tokens, self.num_heads, self.head_dim)
        k = self.k_proj(x).view(num_tokens, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).view(num_tokens, self.num_kv_heads, self.head_dim)
        if self.qk_norm:  # Qwen3: each head normalized over head_dim, before rotary
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rotary(q, step.cos, step.sin), apply_rotary(k, step.cos, step.sin)
        out = step.attn.forward(q, k, v, step.kv_cache, self.layer, step.metadata)
        return self.o_proj(out.reshape(num_tokens, self.num_heads * self.head_dim))


class MLP(nn.Module):
    def __init__(self, config: ModelConfig, dtype: torch.dtype) -> None:
        super().__init__()
        hidden, inner = config.hidden_size, config.intermediate_size
        self.gate_proj = nn.Linear(hidden, inner, bias=False, dtype=dtype)
        self.up_proj = nn.Linear(hidden, inner, bias=False, dtype=dtype)
        self.down_proj = nn.Linear(inner, hidden, bias=False, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, layer: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.self_attn = Attention(config, layer, dtype)
        self.mlp = MLP(config, dtype)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype)

    def forward(self, hidden: torch.Tensor, step: StepContext) -> torch.Tensor:
        # hidden: [num_tokens, hidden_size]
        hidden = hidden + self.self_attn(self.input_layernorm(hidden), step)
        return hidden + self.mlp(self.post_attention_layernorm(hidden))


class DecoderModel(nn.Module):
    def __init__(self, config: ModelConfig, dtype: torch.dtype) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, dtype=dtype)
        self.layers = nn.ModuleList(
            DecoderLayer(config, i, dtype) for i in range(config.num_layers)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype)


class CausalLM(nn.Module):
    """The decoder plus its LM head. Construct under torch.device("meta") to skip the random
    init when real weights follow (load_hf_weights assigns them)."""

    def __init__(self, config: ModelConfig, dtype: torch.dtype) -> None:
        super().__init__()
        self.config = config
        self.model = DecoderModel(config, dtype)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False, dtype=dtype)
        self.rotary = RotaryEmbedding(config.head_dim, config.rope_theta)

    def load_hf_weights(self, state: dict[str, torch.Tensor]) -> None:
        """Adopts HF-named tensors (no copy); raises on any missing or unexpected name.

        The LM head shares embed_tokens' tensor when tied or absent from the checkpoint.
        """
        state = {k: t for k, t in state.items() if not k.endswith(_DERIVED_KEY_SUFFIXES)}
        if self.config.tie_word_embeddings or "lm_head.weight" not in state:
            state["lm_head.weight"] = state["model.embed_tokens.weight"]
        self.load_state_dict(state, strict=True, assign=True)

    def forward(
        self, batch: ForwardBatch, kv_cache: torch.Tensor, attn: AttentionBackend
    ) -> torch.Tensor:
        """Runs one step; mutates kv_cache at batch.slot_mapping (every layer).

        # returns: [num_seqs, vocab_size] float32 logits of each sequence's last token
        """
        inputs = StepInputs.of(batch, self.lm_head.weight.device)
        return self.step(inputs, kv_cache, attn, attn.prepare(batch, kv_cache))

    def step(
        self, inputs: StepInputs, kv_cache: torch.Tensor, attn: AttentionBackend, metadata: object
    ) -> torch.Tensor:
        """forward() on inputs already on the device: reads no host value, so a CUDA graph
        can capture it (engine/cuda_graphs.py) when attn's metadata is all device tensors.

        # returns: [len(inputs.last_index), vocab_size] float32 logits
        """
        cos, sin = self.rotary.cos_sin(inputs.positions, self.lm_head.weight.dtype)
        step = StepContext(attn, kv_cache, metadata, cos, sin)
        hidden = self.model.embed_tokens(inputs.token_ids)  # [num_tokens, hidden]
        for layer in self.model.layers:
            hidden = layer(hidden, step)
        return self.lm_head(self.model.norm(hidden[inputs.last_index])).float()


@dataclass(slots=True)
class StepInputs:
    """A step's token-level inputs on the model's device."""

    token_ids: torch.Tensor  # [num_tokens] int
    positions: torch.Tensor  # [num_tokens] int
    last_index: torch.Tensor  # [num_seqs] int, the row of each sequence's last token

    @classmethod
    def of(cls, batch: ForwardBatch, device: torch.device) -> StepInputs:
        last = torch.tensor(batch.query_start_loc[1:]) - 1
        token_ids, positions = (
            to_device(batch.token_ids, device),
            to_device(batch.positions, device),
        )
        return cls(token_ids, positions, to_device(last, device))
