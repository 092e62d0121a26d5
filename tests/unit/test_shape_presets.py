"""The random-weight presets in real models' shapes (qwen2.5-0.5b-shape, qwen3-0.6b-shape).

The real presets are 1–1.2 GB and built on first use only (B6 on a GPU); here their configs
are checked against the published models, and the machinery that writes them runs on the
same configs shrunk to a few KB.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from engine.config import ModelConfig
from engine.model import CausalLM
from engine.presets import SHAPE_CONFIGS
from engine.runner import ModelRunner
from engine.weights import load_state_dict, resolve_model
from tests.hf_reference import SeqStep, make_forward_batch

SMALL_SHAPE = {
    "vocab_size": 512,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
}
PROMPT = [3, 141, 59, 265, 358, 97, 93, 238, 462, 64, 338, 327, 95, 28, 84, 197, 169, 399]


@pytest.fixture(params=sorted(SHAPE_CONFIGS))
def small_preset(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """A preset alias whose config is shrunk to SMALL_SHAPE for this test only."""
    alias = request.param
    monkeypatch.setitem(SHAPE_CONFIGS, alias, {**SHAPE_CONFIGS[alias], **SMALL_SHAPE})
    return alias


@pytest.mark.parametrize(
    ("alias", "num_params", "kv_kib_per_token", "bias", "qk_norm"),
    [("qwen2.5-0.5b-shape", 494_032_768, 12, True, False), ("qwen3-0.6b-shape", 596_049_920, 112, False, True)],
)  # fmt: skip
def test_configs_are_the_published_models(
    alias: str, num_params: int, kv_kib_per_token: int, bias: bool, qk_norm: bool
) -> None:
    """Parameter counts (tied embeddings once) and KV bytes per token of the real models, so
    B6's throughput and roofline are those of Qwen2.5-0.5B and Qwen3-0.6B."""
    config = ModelConfig.from_hf(SHAPE_CONFIGS[alias], {})
    with torch.device("meta"):
        model = CausalLM(config, torch.bfloat16)
    counted = [p for name, p in model.named_parameters() if name != "lm_head.weight"]
    assert config.tie_word_embeddings
    assert sum(p.numel() for p in counted) == num_params
    assert config.kv_bytes_per_token("bfloat16") == kv_kib_per_token * 1024
    assert (config.attention_bias, config.qk_norm) == (bias, qk_norm)


def test_preset_is_seeded_bfloat16_with_a_sane_scale(small_preset: str, tmp_path: Path) -> None:
    """Two builds agree bit for bit; matrices are N(0, 0.02²) and norms 1, stored as bf16."""
    first = resolve_model(small_preset, tmp_path / "a", progress=False)
    second = resolve_model(small_preset, tmp_path / "b", progress=False)
    assert first == tmp_path / "a" / small_preset
    state, again = load_state_dict(first, torch.bfloat16), load_state_dict(second, torch.bfloat16)
    assert sorted(state) == sorted(again)
    assert all(torch.equal(state[name], again[name]) for name in state)
    with safe_open(str(first / "model.safetensors"), "pt") as f:
        assert {f.get_slice(name).get_dtype() for name in f.keys()} == {"BF16"}
    embed = state["model.embed_tokens.weight"].float()
    assert abs(embed.std().item() - 0.02) < 0.002
    assert torch.equal(state["model.norm.weight"], torch.ones(64, dtype=torch.bfloat16))
    assert "lm_head.weight" not in state  # tied, as in the real models


def test_preset_loads_in_hf_and_the_engine_alike(small_preset: str, tmp_path: Path) -> None:
    """B6's HF baseline reads the same directory: HF must accept the config and weights (no
    missing or unexpected tensor) and compute the engine's logits; bf16 logits are finite."""
    from transformers import AutoModelForCausalLM

    model_dir = resolve_model(small_preset, tmp_path, progress=False)
    hf, info = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32, output_loading_info=True
    )
    assert all(not keys for keys in (info["missing_keys"], info["unexpected_keys"]))
    with torch.inference_mode():
        expected = hf(torch.tensor([PROMPT])).logits[0, -1]
    batch = make_forward_batch([SeqStep(PROMPT, len(PROMPT), [0, 1])], page_size=16)
    runner = ModelRunner(model_dir, "float32", num_pages=2, page_size=16)
    torch.testing.assert_close(runner.execute(batch)[0], expected, atol=1e-4, rtol=0)
    bf16 = ModelRunner(model_dir, "bfloat16", num_pages=2, page_size=16)
    assert bool(bf16.execute(batch).isfinite().all())
