"""B0's two arms, each timing one Workload end to end and returning an ArmRun.

EngineArm  one EngineCore (the workers' scheduler defaults, prefix caching on), every request
           submitted at once, stepped until it drains; tokens counted as produced.
HFArm      transformers `generate` in static, left-padded batches in submission order, each
           run to its longest output; only the tokens each request asked for count.

Both take the device to run on (bench_device(): the GPU when there is one). On CUDA the engine
runs as a GPU worker does (Triton attention, decode steps replayed from CUDA graphs of
ENGINE's batch sizes), HF's model and inputs sit on the same device, and every timed region
starts and ends with torch.cuda.synchronize(): no queued device work is left out of a run's
wall time. On the CPU nothing of this applies and the arms run as they always have.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from bench.engine_workloads import Workload
from engine.builder import EngineConfig
from engine.config import ModelConfig
from engine.core import EngineCore
from engine.page_pool import PagePool
from engine.request import Request, SamplingParams
from engine.runner import TORCH_DTYPES, ModelRunner
from engine.scheduler import SchedulerConfig

ENGINE = EngineConfig()  # page size, batch limits and prefix caching as a worker runs them
CPU = torch.device("cpu")


@dataclass(frozen=True, slots=True)
class ArmRun:
    num_output_tokens: int  # useful tokens: what the requests asked for
    wall_s: float
    cpu_s: float  # this process, all threads

    @property
    def tok_per_s(self) -> float:
        return self.num_output_tokens / self.wall_s

    def describe(self) -> str:
        return (
            f"{self.tok_per_s:.1f} tok/s ({self.num_output_tokens} tokens in "
            f"{self.wall_s:.1f} s, cpu/wall {self.cpu_s / self.wall_s:.2f})"
        )


class Stopwatch:
    """Wall and process CPU time of one run; with a CUDA `device`, the device's queue is
    drained before the start and before the stop."""

    def __init__(self, device: torch.device | None = None) -> None:
        self.device = device
        _synchronize(device)
        self.wall_start, self.cpu_start = time.perf_counter(), time.process_time()

    def stop(self, num_output_tokens: int) -> ArmRun:
        _synchronize(self.device)
        wall_s, cpu_s = time.perf_counter() - self.wall_start, time.process_time() - self.cpu_start
        return ArmRun(num_output_tokens, wall_s, cpu_s)


def engine_config(device: torch.device) -> EngineConfig:
    """ENGINE as a worker whose cache is on `device` runs it (its CUDA graph sizes with it)."""
    return ENGINE.model_copy(update={"device": device.type})


def _synchronize(device: torch.device | None) -> None:
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


class EngineArm:
    """A fresh EngineCore (and page pool) per run over one shared ModelRunner."""

    name = "pdserve"

    def __init__(
        self, model_dir: Path, dtype: str, num_pages: int, device: torch.device = CPU
    ) -> None:
        self.num_pages, self.device = num_pages, device
        engine = engine_config(device)
        self.runner = ModelRunner(
            model_dir,
            dtype,
            num_pages,
            ENGINE.page_size,
            ENGINE.attention,  # auto: triton on cuda, torch on the CPU
            device=engine.resolved_device(),
            cuda_graph_batch_sizes=engine.graph_batch_sizes(),  # none on the CPU
        )
        self.scheduler_config = SchedulerConfig(
            max_num_seqs=ENGINE.max_num_seqs,
            max_num_batched_tokens=ENGINE.max_num_batched_tokens,
            enable_prefix_caching=ENGINE.enable_prefix_caching,
        )
        self.num_steps = 0  # of the last run

    def run(self, workload: Workload) -> ArmRun:
        pool = PagePool(self.num_pages, ENGINE.page_size)
        core = EngineCore(self.runner, pool, self.scheduler_config)
        watch = Stopwatch(self.device)
        for i, (prompt, num_out) in enumerate(
            zip(workload.prompts, workload.output_lens, strict=True)
        ):
            sampling = SamplingParams(max_tokens=num_out, ignore_eos=True)
            core.add_request(Request(f"{workload.spec.name}-{i}", list(prompt), sampling))
        num_produced = 0
        while core.has_work:
            num_produced += sum(len(out.new_token_ids) for out in core.step())
        result = watch.stop(num_produced)
        self.num_steps = core.num_steps
        _check_count(self.name, num_produced, workload)
        return result


class HFArm:
    """transformers `generate` in static, left-padded batches, each run to its longest output."""

    name = "hf"

    def __init__(
        self, model_dir: Path, dtype: str, batch_size: int, device: torch.device = CPU
    ) -> None:
        from transformers import AutoModelForCausalLM
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()  # per-call generation-config notices
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=TORCH_DTYPES[dtype])
        self.model.to(device).eval()
        self.device = device
        self.pad_token_id = ModelConfig.from_dir(model_dir).eos_token_ids[0]
        self.batch_size = batch_size

    def run(self, workload: Workload) -> ArmRun:
        watch = Stopwatch(self.device)
        for start in range(0, len(workload.prompts), self.batch_size):
            stop = start + self.batch_size
            self._generate(workload.prompts[start:stop], max(workload.output_lens[start:stop]))
        return watch.stop(workload.num_output_tokens)

    def _generate(self, prompts: Sequence[list[int]], num_new: int) -> None:
        # input_ids, attention_mask: [batch, longest prompt], padding on the left
        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), self.pad_token_id, dtype=torch.int64)
        attention_mask = torch.zeros((len(prompts), width), dtype=torch.int64)
        for row, prompt in enumerate(prompts):
            input_ids[row, width - len(prompt) :] = torch.tensor(prompt)
            attention_mask[row, width - len(prompt) :] = 1
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=input_ids.to(self.device),
                attention_mask=attention_mask.to(self.device),
                do_sample=False,
                max_new_tokens=num_new,
                min_new_tokens=num_new,
                pad_token_id=self.pad_token_id,
            )
        assert out.shape == (len(prompts), width + num_new), out.shape


def _check_count(arm: str, num_produced: int, workload: Workload) -> None:
    if num_produced != workload.num_output_tokens:
        raise RuntimeError(
            f"{arm}/{workload.spec.name}: produced {num_produced} tokens, "
            f"expected {workload.num_output_tokens}"
        )
