"""B6's arms on one CUDA device: the engine (decode steps and offline runs over one
ModelRunner), HF `generate` with a static KV cache, and the HBM bandwidth the roofline uses.

Timing: every engine step ends with the sampler reading the logits to the host, so a step's
perf_counter wall time is what a request sees; CUDA events around runner.execute give the
device's share of it. HF's decode step is the slope between two `generate` runs on the same
prompts that differ only in their number of new tokens (both pay the same prefill).
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from bench.engine_arms import ArmRun, Stopwatch
from bench.engine_workloads import Workload
from engine.batch import ForwardBatch
from engine.builder import EngineConfig
from engine.config import ModelConfig
from engine.core import EngineCore
from engine.page_pool import PagePool
from engine.request import Request, SamplingParams
from engine.runner import ModelRunner
from engine.scheduler import SchedulerConfig

DTYPE, PAGE_SIZE = "bfloat16", EngineConfig().page_size
# A GPU's batch limits (nano-vllm's bench runs 512 sequences and 16k tokens per step);
# prefix caching on, as a worker runs it.
SCHEDULER = SchedulerConfig(max_num_seqs=256, max_num_batched_tokens=8192)


def hbm_bandwidth_gb_s(num_bytes: int, repeats: int, device: torch.device) -> list[float]:
    """One device-to-device copy of num_bytes per sample: (bytes read + written) / time."""
    src = torch.empty(num_bytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)  # warm-up: first-touch and launch costs stay out of the samples
    samples = []
    for _ in range(repeats):
        start, end = _event(), _event()
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        samples.append(2 * num_bytes / (start.elapsed_time(end) * 1e-3) / 1e9)
    return samples


class EventTimedRunner:
    """The runner EngineCore drives: one ModelRunner whose execute() calls are bracketed by
    CUDA events, read back per window of steps (no extra sync inside a step)."""

    def __init__(self, runner: ModelRunner) -> None:
        self.runner = runner
        self.config = runner.config
        self._events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []

    def execute(self, batch: ForwardBatch) -> torch.Tensor:
        start, end = _event(), _event()
        start.record()
        logits = self.runner.execute(batch)
        end.record()
        self._events.append((start, end))
        return logits

    def take_ms(self) -> list[float]:
        """Device time of each execute() since the last call, in ms; waits for the device."""
        torch.cuda.synchronize()
        times = [start.elapsed_time(end) for start, end in self._events]
        self._events.clear()
        return times


class GpuEngine:
    """One ModelRunner shared by every run; each run gets a fresh page pool and EngineCore."""

    def __init__(self, runner: ModelRunner, num_pages: int) -> None:
        self.timed = EventTimedRunner(runner)
        self.num_pages = num_pages

    @classmethod
    def load(cls, model_dir: Path, num_pages: int) -> GpuEngine:
        """As a GPU worker with SCHEDULER's limits runs it: bf16 on CUDA, Triton attention,
        decode steps replayed from CUDA graphs of the worker's batch sizes."""
        config = EngineConfig(
            dtype=DTYPE,
            device="cuda",
            max_num_seqs=SCHEDULER.max_num_seqs,
            max_num_batched_tokens=SCHEDULER.max_num_batched_tokens,
        )
        runner = ModelRunner(
            model_dir,
            DTYPE,
            num_pages,
            PAGE_SIZE,
            attention=config.attention,
            device=config.resolved_device(),
            cuda_graph_batch_sizes=config.graph_batch_sizes(),
        )
        return cls(runner, num_pages)

    @property
    def config(self) -> ModelConfig:
        return self.timed.config

    def new_core(self, scheduler: SchedulerConfig = SCHEDULER) -> EngineCore:
        return EngineCore(self.timed, PagePool(self.num_pages, PAGE_SIZE), scheduler)

    def weight_bytes(self) -> int:
        """Every weight tensor once (a tied LM head shares the embedding's storage)."""
        params = self.timed.runner.model.parameters()
        return sum({p.data_ptr(): p.numel() * p.element_size() for p in params}.values())

    def kv_bytes(self, num_tokens: float) -> float:
        return num_tokens * self.config.kv_bytes_per_token(DTYPE)

    def run_offline(self, workload: Workload) -> ArmRun:
        """Every request submitted at once, stepped until drained; tokens counted as made."""
        core = self.new_core()
        watch = Stopwatch()
        pairs = zip(workload.prompts, workload.output_lens, strict=True)
        for i, (prompt, num_out) in enumerate(pairs):
            sampling = SamplingParams(max_tokens=num_out, ignore_eos=True)
            core.add_request(Request(f"offline-{i}", list(prompt), sampling))
        num_produced = 0
        while core.has_work:
            num_produced += sum(len(out.new_token_ids) for out in core.step())
        torch.cuda.synchronize()
        result = watch.stop(num_produced)
        self.timed.take_ms()  # these steps' events are not reported
        _check_count("pdserve", num_produced, workload.num_output_tokens)
        return result


@dataclass(frozen=True, slots=True)
class StepWindow:
    """A run of consecutive decode steps of one batch."""

    wall_ms: float  # median core.step(): schedule, batch, graph replay, sampling
    device_ms: float  # median runner.execute() time on the device (CUDA events)
    kv_tokens: float  # mean context tokens the batch's attention reads per step


class DecodeBatch:
    """batch_size sequences of context_len random tokens, prefilled together in one step (so
    each then holds context_len + 1 tokens), then stepped one token each per step. Lives
    across one batch size's rounds; close() frees its pages."""

    def __init__(self, engine: GpuEngine, batch_size: int, context_len: int, max_tokens: int):
        rng = random.Random(f"B6-decode-{batch_size}-{context_len}")
        vocab_size = engine.config.vocab_size
        sampling = SamplingParams(max_tokens=max_tokens, ignore_eos=True)
        one_step = SchedulerConfig(
            max_num_seqs=batch_size, max_num_batched_tokens=batch_size * context_len
        )
        self.engine, self.core = engine, engine.new_core(one_step)
        prompts = [
            [rng.randrange(vocab_size) for _ in range(context_len)] for _ in range(batch_size)
        ]
        self.requests = [Request(f"decode-{i}", p, sampling) for i, p in enumerate(prompts)]
        for request in self.requests:
            self.core.add_request(request)
        if len(self.core.step()) != batch_size:
            raise RuntimeError("the decode batch's prefill did not fit in one step")
        engine.timed.take_ms()

    @property
    def prompts(self) -> list[list[int]]:
        return [request.prompt_token_ids for request in self.requests]

    def window(self, num_steps: int) -> StepWindow:
        wall_ms, kv_tokens = [], []
        for _ in range(num_steps):
            kv_tokens.append(sum(request.num_tokens for request in self.requests))
            start = time.perf_counter()
            outputs = self.core.step()
            wall_ms.append((time.perf_counter() - start) * 1e3)
            if len(outputs) != len(self.requests):
                raise RuntimeError(f"a decode step made {len(outputs)} tokens, not one per seq")
        device_ms = statistics.median(self.engine.timed.take_ms())
        return StepWindow(statistics.median(wall_ms), device_ms, statistics.mean(kv_tokens))

    def close(self) -> None:
        self.core.abort_all()


class HFGenerate:
    """transformers `generate` in bf16 with a static KV cache; prompts as one static batch,
    left-padded, run to exactly num_new tokens each. Auto-compile is off (see b6_gpu_engine)."""

    name = "hf"

    def __init__(self, model_dir: Path, device: torch.device) -> None:
        from transformers import AutoModelForCausalLM
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()  # per-call generation-config notices
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16)
        self.model = model.to(device).eval()
        self.device = device
        self.pad_token_id = ModelConfig.from_dir(model_dir).eos_token_ids[0]

    def generate_s(self, prompts: Sequence[list[int]], num_new: int) -> float:
        """Wall seconds of one `generate` (device work included)."""
        input_ids, attention_mask = _left_padded(prompts, self.pad_token_id, self.device)
        torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                do_sample=False,
                max_new_tokens=num_new,
                min_new_tokens=num_new,
                pad_token_id=self.pad_token_id,
                cache_implementation="static",
                disable_compile=True,
            )
        torch.cuda.synchronize()
        elapsed_s = time.perf_counter() - start
        _check_count(self.name, out.shape[1] - input_ids.shape[1], num_new)
        return elapsed_s

    def decode_step_ms(self, prompts: Sequence[list[int]], num_extra: int) -> float:
        """One decode step of the batch: (generate 1 + num_extra tokens - generate 1) / num_extra."""
        short_s = self.generate_s(prompts, 1)
        long_s = self.generate_s(prompts, 1 + num_extra)
        return (long_s - short_s) / num_extra * 1e3

    def run_offline(self, workload: Workload) -> ArmRun:
        """The whole workload as one static batch run to its longest output; only the tokens
        each request asked for count."""
        watch = Stopwatch()
        self.generate_s(workload.prompts, max(workload.output_lens))
        return watch.stop(workload.num_output_tokens)


def _left_padded(
    prompts: Sequence[list[int]], pad_token_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    # input_ids, attention_mask: [num_prompts, longest prompt]
    width = max(len(prompt) for prompt in prompts)
    input_ids = torch.full((len(prompts), width), pad_token_id, dtype=torch.int64)
    attention_mask = torch.zeros((len(prompts), width), dtype=torch.int64)
    for row, prompt in enumerate(prompts):
        input_ids[row, width - len(prompt) :] = torch.tensor(prompt)
        attention_mask[row, width - len(prompt) :] = 1
    return input_ids.to(device), attention_mask.to(device)


def _event() -> torch.cuda.Event:
    return torch.cuda.Event(enable_timing=True)


def _check_count(arm: str, num_produced: int, num_expected: int) -> None:
    if num_produced != num_expected:
        raise RuntimeError(f"{arm}: produced {num_produced} tokens, expected {num_expected}")
