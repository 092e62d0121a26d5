"""Qwen3 (Llama plus a per-head RMSNorm on q and k before rotary) against transformers' own
Qwen3ForCausalLM: a tiny random checkpoint written by transformers must decode, batched and
chunked through the engine, to exactly the greedy tokens of HF `generate`."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from engine.config import ModelConfig
from engine.core import EngineCore
from engine.page_pool import PagePool
from engine.request import Request, SamplingParams
from engine.runner import ModelRunner
from engine.scheduler import SchedulerConfig
from tests.hf_reference import hf_greedy

VOCAB_SIZE = 512
MAX_NEW_TOKENS = 12
PAGE_SIZE = 4
PROMPTS = [random.Random(f"qwen3-{n}").choices(range(VOCAB_SIZE), k=n) for n in (5, 23, 40)]


def qwen3_config_dict(**overrides: object) -> dict[str, object]:
    return {
        "model_type": "qwen3",
        "vocab_size": VOCAB_SIZE,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "max_position_embeddings": 256,
        **overrides,
    }


@pytest.fixture(scope="module")
def qwen3_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Qwen3ForCausalLM saved by transformers, its weights (q_norm and k_norm included)
    redrawn so activations stay O(1) and every norm weight differs from 1."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    fields = qwen3_config_dict(rope_theta=10000.0, rms_norm_eps=1e-6, tie_word_embeddings=False)
    model = Qwen3ForCausalLM(Qwen3Config(**fields)).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if name.endswith("norm.weight"):
                param.copy_(1.0 + 0.2 * noise)
            else:
                param.copy_(noise / param.shape[-1] ** 0.5 if param.dim() == 2 else noise)
    out_dir = tmp_path_factory.mktemp("qwen3-tiny")
    model.save_pretrained(out_dir)
    return out_dir


def test_qwen3_config_has_qk_norm_and_no_qkv_bias() -> None:
    """Qwen3 differs from Qwen2 exactly here: q/k norm on, q/k/v bias off by default."""
    qwen3 = ModelConfig.from_hf(qwen3_config_dict(), {})
    assert (qwen3.qk_norm, qwen3.attention_bias) == (True, False)
    qwen2 = ModelConfig.from_hf(qwen3_config_dict(model_type="qwen2"), {})
    assert (qwen2.qk_norm, qwen2.attention_bias) == (False, True)


def test_unknown_model_type_is_refused() -> None:
    """A decoder this engine does not implement must fail at load, not produce wrong tokens."""
    with pytest.raises(ValueError, match="model_type 'gemma2' is not supported"):
        ModelConfig.from_hf(qwen3_config_dict(model_type="gemma2"), {})


def test_checkpoint_carries_per_head_q_and_k_norms(qwen3_dir: Path) -> None:
    runner = ModelRunner(qwen3_dir, "float32", num_pages=4, page_size=PAGE_SIZE)
    attn = runner.model.model.layers[0].self_attn
    assert attn.q_norm.weight.shape == attn.k_norm.weight.shape == (16,)
    assert attn.q_proj.bias is None


def test_batched_chunked_greedy_matches_hf_generate(qwen3_dir: Path) -> None:
    """All prompts at once, prefill chunked at 16 tokens, pages of 4: the engine's float32
    greedy tokens equal HF's, each prompt generated alone."""
    runner = ModelRunner(qwen3_dir, "float32", num_pages=64, page_size=PAGE_SIZE)
    config = SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=16)
    core = EngineCore(runner, PagePool(64, PAGE_SIZE), config)
    requests = [
        Request(f"r{i}", prompt, SamplingParams(max_tokens=MAX_NEW_TOKENS, ignore_eos=True))
        for i, prompt in enumerate(PROMPTS)
    ]
    for request in requests:
        core.add_request(request)
    while core.has_work:
        core.step()
        core.check_integrity()
    expected = hf_greedy(qwen3_dir, PROMPTS, MAX_NEW_TOKENS, ignore_eos=True)
    assert [request.output_token_ids for request in requests] == expected
