"""The seams ARCHITECTURE.md §2 promises, each checked: stubs, imports (no pickle or eval:
test_no_pickle_eval.py)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from pdserve.protogen import generate

ROOT = Path(__file__).resolve().parents[2]


def test_committed_stubs_equal_freshly_generated(tmp_path: Path):
    generate(tmp_path)
    fresh = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*_pb2*.py*"))
    assert fresh, "protoc produced nothing"
    for rel in fresh:
        assert (ROOT / rel).read_text() == (tmp_path / rel).read_text(), (
            f"{rel} is stale: run `make proto`"
        )


@pytest.mark.parametrize(
    "module",
    [
        "kv_transfer.pages",
        "kv_transfer.wire",
        "engine.config",
        "engine.request",
        "pdserve.channels",  # TLS and tokens, imported by the router
        "router.auth",
        "loadtest.cli",  # the load tester runs where no model is installed
    ],
)
def test_torch_free_modules_do_not_load_torch(module: str):
    loaded = _modules_loaded_by(module)
    assert "torch" not in loaded and "ray" not in loaded


def _modules_loaded_by(module: str) -> set[str]:
    code = f"import sys, {module}; print(' '.join(sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    return set(out.stdout.split())


def _imports_of(package: str) -> set[str]:
    names: set[str] = set()
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
    return names


@pytest.mark.parametrize(
    "package, other", [("prefill_worker", "decode_worker"), ("decode_worker", "prefill_worker")]
)
def test_worker_roles_never_import_each_other(package: str, other: str):
    assert not {name for name in _imports_of(package) if name.split(".")[0] == other}
