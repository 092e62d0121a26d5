"""Triton kernels run under Triton's interpreter where there is no GPU.

TRITON_INTERPRET must be set before a kernel module is imported (triton.jit reads it when it
decorates), so every test that imports engine.attention.triton lives in this folder. The
interpreter computes through numpy, which has no bfloat16: CPU runs check float32 (and
float16); bfloat16 and real shapes run on the GPU (`pytest -m gpu`).
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session")
def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
