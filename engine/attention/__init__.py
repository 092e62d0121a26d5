"""Attention backends over the paged KV cache, chosen by name."""

from __future__ import annotations

import enum

from engine.attention.base import AttentionBackend
from engine.attention.torch_backend import TorchAttentionBackend


class AttentionBackendName(enum.StrEnum):
    TORCH = "torch"


_BACKENDS: dict[AttentionBackendName, type[AttentionBackend]] = {
    AttentionBackendName.TORCH: TorchAttentionBackend,
}


def get_attention_backend(name: str) -> AttentionBackend:
    """A new backend instance; raises ValueError listing the known names for an unknown one."""
    try:
        backend = _BACKENDS[AttentionBackendName(name)]
    except ValueError:
        known = ", ".join(repr(n.value) for n in AttentionBackendName)
        raise ValueError(f"unknown attention backend {name!r}: expected one of {known}") from None
    return backend()


__all__ = ["AttentionBackend", "AttentionBackendName", "get_attention_backend"]
