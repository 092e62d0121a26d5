"""One engine's model, weights and KV cache: turns a ForwardBatch into next-token logits."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from engine.attention import get_attention_backend
from engine.batch import ForwardBatch
from engine.config import ModelConfig
from engine.model import CausalLM
from engine.weights import load_state_dict

if TYPE_CHECKING:
    from engine.cuda_graphs import DecodeGraphs

TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelRunner:
    """Owns the model and the KV cache; `kv_cache` is exposed for transfers.

    kv_cache: [num_pages, num_layers, 2 (K, V), page_size, num_kv_heads, head_dim], zeros at
    start. Which pages hold what is the caller's business (its page pool): execute() writes
    exactly the slots a batch names. Not thread-safe; the caller sets torch's thread count.
    """

    def __init__(
        self,
        model_dir: Path,
        dtype: str,
        num_pages: int,
        page_size: int,
        attention: str = "auto",
        device: str = "cpu",
        cuda_graph_batch_sizes: tuple[int, ...] = (),
    ) -> None:
        if dtype not in TORCH_DTYPES:
            raise ValueError(f"dtype: expected one of {sorted(TORCH_DTYPES)}, got {dtype!r}")
        torch_dtype, torch_device = TORCH_DTYPES[dtype], torch.device(device)
        self.config = ModelConfig.from_dir(Path(model_dir))
        self.layout = self.config.kv_layout(page_size, dtype)
        self.attention = get_attention_backend(attention, torch_device)
        with torch.device("meta"):  # weights are assigned below: skip the random init
            self.model = CausalLM(self.config, torch_dtype)
        self.model.load_hf_weights(_load_to(model_dir, torch_dtype, torch_device))
        self.model.rotary.to(torch_device)
        self.model.eval()
        layout = self.layout
        self.kv_cache = torch.zeros(
            (num_pages, layout.num_layers, 2, page_size, layout.num_kv_heads, layout.head_dim),
            dtype=torch_dtype,
            device=torch_device,
        )
        self.graphs = self._decode_graphs(cuda_graph_batch_sizes, page_size)
        if torch_device.type == "cuda":
            self._warm_up()

    @property
    def device(self) -> torch.device:
        return self.kv_cache.device

    def execute(self, batch: ForwardBatch) -> torch.Tensor:
        """Runs one step and writes its tokens' K/V into kv_cache at batch.slot_mapping.

        # returns: [num_seqs, vocab_size] float32 logits of each sequence's last token
        """
        with torch.inference_mode():
            logits = self.graphs.run(batch) if self.graphs is not None else None
            if logits is None:
                logits = self.model(batch, self.kv_cache, self.attention)
            return logits

    def _warm_up(self) -> None:
        """Compiles the kernels of a prefill and of an eager decode step now rather than in the
        first requests' TTFT: both write pages 0-1, which no request reads before writing."""
        for num_tokens in (2, 1):
            batch = ForwardBatch(
                token_ids=torch.zeros(num_tokens, dtype=torch.int64),
                positions=torch.arange(num_tokens),
                slot_mapping=torch.arange(num_tokens),
                query_start_loc=[0, num_tokens],
                seq_lens=[num_tokens],
                block_tables=[[0, 1]],  # page size 1: two pages
            )
            with torch.inference_mode():
                self.model(batch, self.kv_cache, self.attention)
        torch.cuda.synchronize(self.device)

    def _decode_graphs(self, sizes: tuple[int, ...], page_size: int) -> DecodeGraphs | None:
        """Decode graphs for `sizes` (captured on CUDA, run eagerly elsewhere), or None."""
        if not sizes:
            return None
        from engine.attention.triton import TritonAttentionBackend  # imports triton
        from engine.cuda_graphs import DecodeGraphs

        if not isinstance(self.attention, TritonAttentionBackend):
            raise ValueError("cuda_graph_batch_sizes: decode graphs need the triton attention")
        max_pages = -(-self.config.max_position_embeddings // page_size)
        capture = self.device.type == "cuda"
        return DecodeGraphs(self.model, self.kv_cache, self.attention, sizes, max_pages, capture)


def _load_to(model_dir: Path, dtype: torch.dtype, device: torch.device) -> dict[str, torch.Tensor]:
    state = load_state_dict(Path(model_dir), dtype)
    return {name: t.to(device) for name, t in state.items()}
