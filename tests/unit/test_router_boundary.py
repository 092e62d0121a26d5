"""ARCHITECTURE §2: the router loads neither torch nor ray (nor transformers)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_importing_the_router_server_loads_no_torch_ray_or_transformers():
    code = "import sys, router.server; print(' '.join(sorted(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    loaded = {name.split(".")[0] for name in result.stdout.split()}
    assert "router" in loaded  # the probe really imported it
    assert not loaded & {"torch", "ray", "transformers"}
