"""Triton paged attention: the CUDA backend (tested on CPU under Triton's interpreter).

kv_write.store_kv writes a step's K/V into its slots; decode.paged_decode attends one query
token per sequence; prefill.paged_prefill attends a ragged batch whose sequences may carry a
cached prefix. backend.TritonAttentionBackend puts them behind engine.attention's seam.
Importing this package imports triton: engine.attention does so only when asked for it.
"""

from engine.attention.triton.backend import TritonAttentionBackend, TritonAttentionMetadata

__all__ = ["TritonAttentionBackend", "TritonAttentionMetadata"]
