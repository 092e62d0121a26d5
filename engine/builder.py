"""Builds a worker's engine from its configuration: runner, page pool, scheduler, loop.

The runner is the model (`runner="model"`: weights loaded, real logits) or, for tests and
chaos runs, engine/mock_runner.py (`runner="mock"`: no weights, checkable tokens, a
modelled cost per step).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from engine.attention import AttentionBackendName, resolve_attention
from engine.config import ModelConfig
from engine.core import EngineCore
from engine.loop import EngineLoop
from engine.mock_runner import MockRunner
from engine.page_pool import PageEvent, PagePool
from engine.runner import ModelRunner
from engine.scheduler import SchedulerConfig

DEFAULT_MODEL_CACHE = Path.home() / ".cache" / "pdserve" / "models"

RunnerKind = Literal["model", "mock"]


class EngineConfig(BaseModel):
    """Engine settings shared by every worker role."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = Field(
        "smollm2-135m", description="Alias, local HF directory, .gguf file or cached HF id."
    )
    model_cache_dir: Path = Field(
        DEFAULT_MODEL_CACHE, description="Where converted models are kept."
    )
    dtype: Literal["float32", "bfloat16"] = Field(
        "float32", description="Weights and KV cache dtype."
    )
    page_size: int = Field(16, ge=1, le=1024, description="Tokens per KV page.")
    kv_cache_mib: int = Field(
        512, ge=1, description="KV cache size; the page count derives from it."
    )
    max_num_seqs: int = Field(64, ge=1, description="Running requests per step.")
    max_num_batched_tokens: int = Field(
        512, ge=1, description="Token budget per step (chunked prefill)."
    )
    enable_prefix_caching: bool = Field(
        True, description="Reuse cached full pages of equal prefixes."
    )
    num_threads: int = Field(1, ge=1, description="torch intra-op threads of this worker.")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Where the model and KV cache live; auto: cuda when a GPU is visible."
    )
    attention: Literal["auto", "torch", "triton"] = Field(
        "auto", description="Attention backend; auto: triton on cuda, torch elsewhere."
    )
    cuda_graphs: bool = Field(
        True,
        description="On cuda with triton attention: decode steps replay CUDA graphs captured at "
        "start for batch sizes 1, 2, 4, 8, 16, 32, … up to max_num_seqs.",
    )
    runner: RunnerKind = Field(
        "model",
        description="model: load the weights and run them; mock: no weights, each next token "
        "a hash of the context read back through the KV cache (engine/mock_runner.py), for "
        "tests and chaos runs (float32 only).",
    )
    mock_prefill_s_per_token: float = Field(
        0.0, ge=0, description="Mock runner: modelled seconds per prompt token in a step."
    )
    mock_decode_s_per_step: float = Field(
        0.0, ge=0, description="Mock runner: modelled seconds every step costs."
    )

    @model_validator(mode="after")
    def _mock_in_float32(self) -> EngineConfig:
        if self.runner == "mock" and self.dtype != "float32":
            raise ValueError(
                f"dtype: the mock runner needs float32 (exact token ids), not {self.dtype}"
            )
        return self

    def resolved_device(self) -> str:
        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return self.device

    def graph_batch_sizes(self) -> tuple[int, ...]:
        """The decode batch sizes captured in CUDA graphs; none off cuda or without triton."""
        device = torch.device(self.resolved_device())
        if not self.cuda_graphs or device.type != "cuda":
            return ()
        if resolve_attention(self.attention, device) is not AttentionBackendName.TRITON:
            return ()
        sizes = [1, 2, 4, 8, *range(16, self.max_num_seqs + 1, 16), self.max_num_seqs]
        return tuple(sorted({size for size in sizes if size <= self.max_num_seqs}))

    def num_pages(self, model: ModelConfig) -> int:
        return self.kv_cache_mib * 2**20 // model.kv_layout(self.page_size, self.dtype).page_nbytes

    def check_fits(self, model: ModelConfig) -> None:
        """One request of the model's full context must fit in the pool, or it could never run."""
        capacity = self.num_pages(model) * self.page_size
        if capacity < model.max_position_embeddings:
            raise ValueError(
                f"kv_cache_mib: {self.kv_cache_mib} MiB holds {capacity} tokens, less than the "
                f"model's context of {model.max_position_embeddings}"
            )


def build_engine(
    config: EngineConfig,
    model_dir: Path,
    name: str,
    on_page_event: Callable[[PageEvent], None] | None = None,
) -> tuple[EngineLoop, ModelRunner | MockRunner]:
    """Loads the model (or the mock) and returns a started engine loop and its runner (for the
    KV tensor). `on_page_event` receives the page pool's prefix-cache events, on the engine thread."""
    model = ModelConfig.from_dir(model_dir)
    config.check_fits(model)
    num_pages = config.num_pages(model)
    runner = _make_runner(config, model_dir, num_pages)
    pool = PagePool(num_pages, config.page_size, on_event=on_page_event)
    scheduler_config = SchedulerConfig(
        max_num_seqs=config.max_num_seqs,
        max_num_batched_tokens=config.max_num_batched_tokens,
        enable_prefix_caching=config.enable_prefix_caching,
    )
    loop = EngineLoop(EngineCore(runner, pool, scheduler_config), name=name)
    loop.start()
    return loop, runner


def _make_runner(config: EngineConfig, model_dir: Path, num_pages: int) -> ModelRunner | MockRunner:
    if config.runner == "mock":
        return MockRunner(
            model_dir,
            config.dtype,
            num_pages,
            config.page_size,
            prefill_s_per_token=config.mock_prefill_s_per_token,
            decode_s_per_step=config.mock_decode_s_per_step,
        )
    return ModelRunner(
        model_dir,
        config.dtype,
        num_pages,
        config.page_size,
        attention=config.attention,
        device=config.resolved_device(),
        cuda_graph_batch_sizes=config.graph_batch_sizes(),
    )
