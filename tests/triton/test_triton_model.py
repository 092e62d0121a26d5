"""The tiny model on the Triton backend against HF transformers and the torch backend.

Under the interpreter on CPU (float32): every schedule's logits equal HF's, as the torch
backend's do (tests/unit/test_model.py), and a mixed batch equals the torch backend's. Decode
graphs run their static-buffer step eagerly on CPU, so padding rows and the buckets' choice
are checked here; the capture itself is checked on the GPU (`pytest -m gpu`).
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from engine.runner import ModelRunner
from tests import hf_reference
from tests.hf_reference import SeqStep, make_forward_batch

NUM_PAGES = 160
ATOL = 1e-4
PROMPT = random.Random(7).sample(range(3, 49152), 45)
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def run_chunks(runner: ModelRunner, tokens: list[int], chunks: list[int], pages: list[int]):
    """Feeds `tokens` in chunks of the given sizes; returns each step's logits row, stacked."""
    rows, done = [], 0
    for size in chunks:
        done += size
        batch = make_forward_batch([SeqStep(tokens[:done], size, pages)], runner.layout.page_size)
        rows.append(runner.execute(batch)[0])
    return torch.stack(rows).cpu()


def pages(runner: ModelRunner, num_tokens: int, seed: int) -> list[int]:
    return random.Random(seed).sample(range(NUM_PAGES), runner.layout.num_pages_for(num_tokens))


@pytest.fixture(scope="module")
def hf_logits(tiny_dir: Path) -> torch.Tensor:
    return hf_reference.hf_logits(tiny_dir, PROMPT)


@pytest.fixture(scope="module", params=[1, 16, 7], ids=lambda size: f"page_size={size}")
def runner(request: pytest.FixtureRequest, tiny_dir: Path, device: torch.device) -> ModelRunner:
    return ModelRunner(
        tiny_dir, "float32", NUM_PAGES, request.param, attention="triton", device=str(device)
    )


def test_chunked_prefill_matches_hf(runner: ModelRunner, hf_logits: torch.Tensor) -> None:
    """Chunks starting and ending mid-page read earlier chunks' K/V through the block table."""
    chunks = [10, 1, 17, 5, 12]
    rows = run_chunks(runner, PROMPT, chunks, pages(runner, len(PROMPT), 2))
    ends = [sum(chunks[: i + 1]) - 1 for i in range(len(chunks))]
    torch.testing.assert_close(rows, hf_logits[ends], atol=ATOL, rtol=0)


def test_decode_steps_match_hf(runner: ModelRunner, hf_logits: torch.Tensor) -> None:
    """A prefill of 30 tokens, then one token per step through the decode kernel."""
    chunks = [30] + [1] * (len(PROMPT) - 30)
    rows = run_chunks(runner, PROMPT, chunks, pages(runner, len(PROMPT), 3))
    torch.testing.assert_close(rows, hf_logits[29:], atol=ATOL, rtol=0)


def mixed_steps(page_size: int) -> list[SeqStep]:
    contexts = [PROMPT[:12], PROMPT[5:35], PROMPT[::-1][:20], PROMPT[:3]]
    sizes = [-(-len(c) // page_size) for c in contexts]
    pool = random.Random(20).sample(range(NUM_PAGES), sum(sizes))
    tables = [pool[sum(sizes[:i]) : sum(sizes[: i + 1])] for i in range(len(sizes))]
    return [SeqStep(c, n, t) for c, n, t in zip(contexts, [12, 9, 1, 1], tables, strict=True)]


def test_mixed_batch_matches_torch_backend(runner: ModelRunner, tiny_dir: Path) -> None:
    """Fresh prefill, continued chunk and decodes in one step: the ragged prefill kernel."""
    page_size = runner.layout.page_size
    reference = ModelRunner(tiny_dir, "float32", NUM_PAGES, page_size, attention="torch")
    steps = mixed_steps(page_size)
    for step in steps:  # the context before this step's tokens, on both runners
        if len(step.context) > step.num_new:
            prior = SeqStep(step.context[: -step.num_new], len(step.context) - step.num_new,
                            step.page_ids)  # fmt: skip
            for r in (runner, reference):
                r.execute(make_forward_batch([prior], page_size))
    batch = make_forward_batch(steps, page_size)
    expected = reference.execute(batch)
    torch.testing.assert_close(runner.execute(batch).cpu(), expected, atol=ATOL, rtol=0)


@pytest.fixture(scope="module")
def graphed(tiny_dir: Path, device: torch.device) -> ModelRunner:
    """Decode graphs for batch sizes 1, 2 and 4 (run eagerly on CPU, captured on CUDA)."""
    return ModelRunner(tiny_dir, "float32", NUM_PAGES, 16, "triton", str(device), (1, 2, 4))


def decode_batch(contexts: list[list[int]], tables: list[list[int]], page_size: int):
    steps = [SeqStep(c, 1, t) for c, t in zip(contexts, tables, strict=True)]
    return make_forward_batch(steps, page_size)


def test_decode_graphs_pad_to_their_bucket(graphed: ModelRunner, tiny_dir: Path) -> None:
    """Three decodes run in the bucket of 4 (one padding row) and equal the eager step; the
    padding row writes no K/V."""
    eager = ModelRunner(tiny_dir, "float32", NUM_PAGES, 16, "triton", str(graphed.device))
    contexts = [PROMPT[:20], PROMPT[7:40], PROMPT[:5]]
    tables = [[3, 9], [40, 2, 77], [120]]
    for r in (graphed, eager):  # every context but its last token
        prior = [SeqStep(c[:-1], len(c) - 1, t) for c, t in zip(contexts, tables, strict=True)]
        r.execute(make_forward_batch(prior, 16))
    before = graphed.kv_cache.clone()
    batch = decode_batch(contexts, tables, 16)
    logits = graphed.graphs.run(batch)
    assert logits is not None and logits.shape[0] == 3
    torch.testing.assert_close(logits.cpu(), eager.execute(batch).cpu(), atol=ATOL, rtol=0)
    written = (graphed.kv_cache != before).any(dim=(1, 2, 4, 5)).nonzero().tolist()
    slots = batch.slot_mapping.tolist()
    assert sorted(map(tuple, written)) == sorted((s // 16, s % 16) for s in slots)


def test_decode_graphs_decline_what_no_bucket_holds(graphed: ModelRunner) -> None:
    """A prefill step or more sequences than the largest bucket run eagerly (run → None)."""
    prefill = make_forward_batch([SeqStep(PROMPT[:9], 9, [5])], 16)
    assert graphed.graphs.run(prefill) is None
    five = decode_batch([PROMPT[:4]] * 5, [[i] for i in range(5)], 16)
    assert graphed.graphs.run(five) is None
    assert graphed.execute(five).shape[0] == 5


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_gpu_graph_replays_equal_eager_greedy(tiny_dir: Path, dtype: str) -> None:
    """On CUDA: 24 greedy decode steps of 3 sequences from captured graphs give the eager
    Triton step's tokens."""
    runners = [
        ModelRunner(tiny_dir, dtype, NUM_PAGES, 16, "triton", "cuda", sizes)
        for sizes in ((1, 2, 4, 8), ())
    ]
    assert runners[0].graphs is not None and runners[0].graphs.sizes == [1, 2, 4, 8]
    outputs = []
    for r in runners:
        contexts = [PROMPT[:20], PROMPT[7:40], PROMPT[:5]]
        tables = [[3, 9, 11], [40, 2, 77, 78], [120, 121, 122]]
        steps = [SeqStep(c, len(c), t) for c, t in zip(contexts, tables, strict=True)]
        batch = make_forward_batch(steps, 16)
        for _ in range(24):
            tokens = r.execute(batch).argmax(-1).tolist()
            contexts = [c + [t] for c, t in zip(contexts, tokens, strict=True)]
            batch = decode_batch(contexts, tables, 16)
        outputs.append(contexts)
    assert outputs[0] == outputs[1]
