"""Model resolution, the cache entries it builds, and the torch-free model config."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import engine.weights
from engine.config import ModelConfig
from engine.weights import load_state_dict, resolve_model

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def fresh_cache(tmp_path: Path, smollm2_dir: Path) -> Path:
    """An empty cache that already holds the SmolLM2 conversion (so `tiny` builds in ms)."""
    (tmp_path / "smollm2-135m").symlink_to(smollm2_dir)
    return tmp_path


def test_tiny_preset_is_deterministic(tiny_dir: Path, fresh_cache: Path) -> None:
    """Two independent builds of `tiny` hold identical tensors: tests may pin its outputs."""
    rebuilt = resolve_model("tiny", fresh_cache, progress=False)
    assert rebuilt == fresh_cache / "tiny"
    first, second = (
        load_state_dict(tiny_dir, torch.float32),
        load_state_dict(rebuilt, torch.float32),
    )
    assert sorted(first) == sorted(second)
    assert all(torch.equal(first[name], second[name]) for name in first)


def test_tiny_preset_shape(tiny_dir: Path) -> None:
    config = ModelConfig.from_dir(tiny_dir)
    assert (config.num_layers, config.hidden_size, config.intermediate_size) == (2, 64, 128)
    assert (config.num_heads, config.num_kv_heads, config.head_dim) == (4, 2, 16)
    assert (config.vocab_size, config.max_position_embeddings) == (49152, 2048)
    assert (config.rope_theta, config.eos_token_ids) == (10000.0, (2,))


def test_second_resolve_returns_the_cached_entry(fresh_cache: Path, monkeypatch) -> None:
    """Once built, an entry is returned as is: no rebuild on later calls."""
    first = resolve_model("tiny", fresh_cache, progress=False)
    monkeypatch.setattr(engine.weights, "_write_tiny", _fail_build)
    assert resolve_model("tiny", fresh_cache, progress=False) == first


def test_failed_build_leaves_no_entry(fresh_cache: Path, monkeypatch) -> None:
    """A crash mid-conversion must not leave a half-written entry a later call would trust."""

    def half_build(source: Path, out_dir: Path) -> None:
        (out_dir / "config.json").write_text("{}")
        _fail_build(source, out_dir)

    monkeypatch.setattr(engine.weights, "_write_tiny", half_build)
    with pytest.raises(RuntimeError, match="conversion interrupted"):
        resolve_model("tiny", fresh_cache, progress=False)
    assert sorted(p.name for p in fresh_cache.iterdir() if not p.name.endswith(".lock")) == [
        "smollm2-135m"
    ]


def test_concurrent_builders_agree_on_one_complete_entry(fresh_cache: Path) -> None:
    """Two processes (e.g. two workers starting at once) resolve the same uncached entry."""
    code = (
        "from pathlib import Path; from engine.weights import resolve_model; "
        f"print(resolve_model('tiny', Path({str(fresh_cache)!r}), progress=False))"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT
        )
        for _ in range(2)
    ]
    outputs = [proc.communicate(timeout=120)[0].strip() for proc in procs]
    assert outputs == [str(fresh_cache / "tiny")] * 2
    assert [proc.returncode for proc in procs] == [0, 0]
    leftovers = [p.name for p in fresh_cache.iterdir() if ".tmp-" in p.name]
    assert leftovers == []
    # embed_tokens + 2 layers x 9 tensors + final norm: the entry is complete
    assert len(load_state_dict(fresh_cache / "tiny", torch.float32)) == 20


def _fail_build(source: Path, out_dir: Path) -> None:
    raise RuntimeError("conversion interrupted")


@pytest.mark.parametrize("spec", ["no-such-model", "no-such-org/no-such-model", "/no/such/dir"])
def test_unknown_spec_is_a_value_error_naming_it(spec: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=f"unknown model spec '{spec}'.*'smollm2-135m'"):
        resolve_model(spec, tmp_path, progress=False)


def test_local_directory_resolves_to_itself(tiny_dir: Path, tmp_path: Path) -> None:
    assert resolve_model(str(tiny_dir), tmp_path, progress=False) == tiny_dir


def test_sharded_checkpoint_loads_every_shard(tiny_dir: Path, tmp_path: Path) -> None:
    """Checkpoints split over several safetensors files load as one state dict."""
    state = load_state_dict(tiny_dir, torch.float32)
    names = sorted(state)
    save_file({n: state[n] for n in names[:5]}, str(tmp_path / "model-00001-of-00002.safetensors"))
    save_file({n: state[n] for n in names[5:]}, str(tmp_path / "model-00002-of-00002.safetensors"))
    loaded = load_state_dict(tmp_path, torch.bfloat16)
    assert sorted(loaded) == names
    assert {t.dtype for t in loaded.values()} == {torch.bfloat16}


def test_smollm2_config_fields(smollm2_dir: Path) -> None:
    """The router sizes contexts and stops on EOS from these values."""
    config = ModelConfig.from_dir(smollm2_dir)
    assert (config.num_layers, config.num_heads, config.num_kv_heads) == (30, 9, 3)
    assert (config.head_dim, config.hidden_size, config.vocab_size) == (64, 576, 49152)
    assert config.max_position_embeddings == 8192
    assert 2 in config.eos_token_ids and config.bos_token_id == 1
    assert config.tie_word_embeddings and not config.attention_bias
    assert config.rope_theta == 100000.0
    assert config.kv_bytes_per_token("bfloat16") == 2 * 30 * 3 * 64 * 2


def test_smollm2_dir_has_tokenizer_and_chat_template(smollm2_dir: Path) -> None:
    """The router reads the tokenizer and the chat template from the resolved directory."""
    import json

    tokenizer_config = json.loads((smollm2_dir / "tokenizer_config.json").read_text())
    assert "<|im_start|>" in tokenizer_config["chat_template"]
    assert (smollm2_dir / "tokenizer.json").is_file()


def test_qwen2_gets_qkv_bias_and_rope_parameters_win() -> None:
    """Qwen2 configs omit attention_bias; HF 5.x nests rope_theta under rope_parameters."""
    config = ModelConfig.from_hf(
        {
            "model_type": "qwen2",
            "vocab_size": 10,
            "hidden_size": 8,
            "intermediate_size": 16,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "max_position_embeddings": 32768,
            "rope_parameters": {"rope_theta": 1e6, "rope_type": "default"},
            "eos_token_id": 5,
            "use_sliding_window": False,
            "sliding_window": 4096,
        },
        {"eos_token_id": [7, 5]},
    )
    assert config.attention_bias is True
    assert (config.rope_theta, config.num_kv_heads, config.head_dim) == (1e6, 2, 4)
    assert (config.eos_token_ids, config.max_position_embeddings) == ((7, 5), 32768)


def test_unsupported_rope_scaling_is_refused() -> None:
    """Silently ignoring rope scaling would produce wrong tokens; refuse instead."""
    config = {"rope_scaling": {"rope_type": "llama3", "factor": 8.0}, "model_type": "llama"}
    with pytest.raises(ValueError, match="rope type 'llama3'"):
        ModelConfig.from_hf(config, {})


def test_config_and_weights_modules_do_not_import_torch() -> None:
    """The router imports engine.config (and resolves models) and must stay torch-free."""
    code = (
        "import sys, engine.config, engine.weights; "
        "print('torch' in sys.modules, 'transformers' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True,
        cwd=REPO_ROOT,
    )  # fmt: skip
    assert result.stdout.strip() == "False False"


def test_repo_id_in_offline_hf_cache_resolves_to_its_snapshot(
    tiny_dir: Path, tmp_path: Path
) -> None:
    """An HF repo id already downloaded resolves offline (the HF cache layout, no network)."""
    snapshot = tmp_path / "hub" / "models--acme--tiny-llama" / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    for file in tiny_dir.iterdir():
        (snapshot / file.name).symlink_to(file)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0123abcd")
    code = (
        "from pathlib import Path; from engine.weights import resolve_model; "
        f"print(resolve_model('acme/tiny-llama', Path({str(tmp_path)!r}), progress=False))"
    )
    # huggingface_hub reads its cache location from the environment at import time.
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True,
        cwd=REPO_ROOT, env=env,
    )  # fmt: skip
    assert result.stdout.strip() == str(snapshot)
