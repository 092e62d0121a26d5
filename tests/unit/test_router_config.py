"""RouterConfig: read once from PDSERVE_ROUTER_* env, frozen, cross-checked."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from router.config import PolicyName, RouterConfig


def test_environment_is_read_with_the_router_prefix(monkeypatch, tmp_path: Path):
    monkeypatch.setenv("PDSERVE_ROUTER_MODEL_DIR", str(tmp_path / "SmolLM2"))
    monkeypatch.setenv("PDSERVE_ROUTER_PORT", "6000")
    monkeypatch.setenv("PDSERVE_ROUTER_ROUTING_POLICY", "round_robin")
    config = RouterConfig()
    assert (config.port, config.routing_policy) == (6000, PolicyName.ROUND_ROBIN)
    assert config.served_model == "SmolLM2"
    assert config.bind_address == "127.0.0.1:6000"


def test_config_is_frozen(tmp_path: Path):
    config = RouterConfig(model_dir=tmp_path)
    with pytest.raises(ValidationError):
        config.port = 1


@pytest.mark.parametrize(
    "overrides",
    [
        {"max_tokens_default": 100, "max_tokens_limit": 50},
        {"max_prompt_bytes": 2**20, "grpc_max_message_bytes": 2**20},
        {"routing_policy": "random"},
        {"port": 70000},
    ],
)
def test_inconsistent_settings_are_refused_at_construction(tmp_path: Path, overrides):
    with pytest.raises(ValidationError):
        RouterConfig(model_dir=tmp_path, **overrides)
