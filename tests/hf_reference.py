"""Reference outputs the engine is compared with, shared by fidelity tests.

`hf_greedy` is Hugging Face transformers' own greedy `generate`; `runner_greedy` is the
simplest possible loop over one ModelRunner (one prefill step, then one token per step).
`make_forward_batch` builds a ForwardBatch from per-sequence steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.batch import ForwardBatch
from engine.core import EngineCore
from engine.page_pool import PagePool
from engine.request import Request, SamplingParams
from engine.runner import ModelRunner
from engine.scheduler import SchedulerConfig


@dataclass(slots=True)
class SeqStep:
    """One sequence's share of a step: the last num_new tokens of `context` are computed now."""

    context: list[int]
    num_new: int
    page_ids: list[int]  # the sequence's pages in order; at least ceil(len(context) / page_size)


def make_forward_batch(steps: Sequence[SeqStep], page_size: int) -> ForwardBatch:
    token_ids, positions, slots, query_start_loc = [], [], [], [0]
    for step in steps:
        new_positions = range(len(step.context) - step.num_new, len(step.context))
        token_ids += step.context[new_positions.start :]
        positions += new_positions
        slots += [step.page_ids[p // page_size] * page_size + p % page_size for p in new_positions]
        query_start_loc.append(query_start_loc[-1] + step.num_new)
    return ForwardBatch(
        token_ids=torch.tensor(token_ids, dtype=torch.int64),
        positions=torch.tensor(positions, dtype=torch.int64),
        slot_mapping=torch.tensor(slots, dtype=torch.int64),
        query_start_loc=query_start_loc,
        seq_lens=[len(step.context) for step in steps],
        block_tables=[step.page_ids[: -(-len(step.context) // page_size)] for step in steps],
    )


def runner_greedy(
    runner: ModelRunner, prompt: list[int], max_new_tokens: int, page_ids: list[int]
) -> list[int]:
    """Greedy tokens after `prompt`, never stopping at EOS; writes runner's pages `page_ids`."""
    page_size = runner.layout.page_size
    context, num_new, output = list(prompt), len(prompt), []
    for _ in range(max_new_tokens):
        batch = make_forward_batch([SeqStep(context, num_new, page_ids)], page_size)
        token = int(runner.execute(batch)[0].argmax())
        output.append(token)
        context.append(token)
        num_new = 1
    return output


def engine_greedy(
    runner: ModelRunner, num_pages: int, prompts: Sequence[list[int]], max_new_tokens: int,
    max_num_batched_tokens: int,
) -> tuple[EngineCore, list[Request]]:  # fmt: skip
    """Every prompt submitted at once to one EngineCore over `runner` (continuous batching,
    chunked prefill, prefix reuse), stepped until done, ignoring EOS; returns the engine and
    its finished requests, in prompt order."""
    page_size = runner.layout.page_size
    config = SchedulerConfig(max_num_batched_tokens=max_num_batched_tokens)
    engine = EngineCore(runner, PagePool(num_pages, page_size), config)
    sampling = SamplingParams(max_tokens=max_new_tokens, ignore_eos=True)
    reqs = [Request(f"r{i}", prompt, sampling) for i, prompt in enumerate(prompts)]
    for req in reqs:
        engine.add_request(req)
    while engine.has_work:
        engine.step()
    return engine, reqs


def hf_logits(model_dir: Path, prompt: list[int]) -> torch.Tensor:
    """HF eager float32 logits at every position of `prompt`: [len(prompt), vocab_size]."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32, attn_implementation="eager"
    )
    with torch.inference_mode():
        return model(torch.tensor([prompt])).logits[0]


def hf_greedy(
    model_dir: Path, prompts: Sequence[list[int]], max_new_tokens: int, ignore_eos: bool = False
) -> list[list[int]]:
    """HF `generate(do_sample=False)` new tokens for each prompt, run alone in float32.

    With ignore_eos=False a sequence ends with its first EOS id (included), as the engine's
    does; with ignore_eos=True every output has exactly max_new_tokens tokens.
    """
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    no_eos = {"eos_token_id": None} if ignore_eos else {}
    outputs = []
    with torch.inference_mode():
        for prompt in prompts:
            input_ids = torch.tensor([prompt])
            generated = model.generate(
                input_ids,
                attention_mask=torch.ones_like(input_ids),
                do_sample=False,
                max_new_tokens=max_new_tokens,
                pad_token_id=model.generation_config.pad_token_id,
                **no_eos,
            )
            outputs.append(generated[0, len(prompt) :].tolist())
    if ignore_eos:
        assert all(len(out) == max_new_tokens for out in outputs), "HF stopped at EOS anyway"
    return outputs
