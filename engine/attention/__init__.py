"""Attention backends over the paged KV cache, chosen by name ("auto": Triton on CUDA)."""

from __future__ import annotations

import enum

import torch

from engine.attention.base import AttentionBackend
from engine.attention.torch_backend import TorchAttentionBackend


class AttentionBackendName(enum.StrEnum):
    AUTO = "auto"
    TORCH = "torch"
    TRITON = "triton"


def resolve_attention(name: str, device: torch.device) -> AttentionBackendName:
    """The backend `name` means on `device`: "auto" is Triton on CUDA and torch elsewhere.

    Raises ValueError listing the known names for an unknown one.
    """
    try:
        chosen = AttentionBackendName(name)
    except ValueError:
        known = ", ".join(repr(n.value) for n in AttentionBackendName)
        raise ValueError(f"attention: unknown backend {name!r}, expected one of {known}") from None
    if chosen is AttentionBackendName.AUTO:
        cuda = device.type == "cuda"
        return AttentionBackendName.TRITON if cuda else AttentionBackendName.TORCH
    return chosen


def get_attention_backend(name: str, device: torch.device) -> AttentionBackend:
    """A new backend instance for `device` (see resolve_attention). Only the Triton backend
    imports triton, and only when chosen."""
    if resolve_attention(name, device) is AttentionBackendName.TRITON:
        from engine.attention.triton import TritonAttentionBackend

        return TritonAttentionBackend()
    return TorchAttentionBackend()


__all__ = ["AttentionBackend", "AttentionBackendName", "get_attention_backend", "resolve_attention"]
