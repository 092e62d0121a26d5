"""The commands Kubernetes pods run — `pdserve router`, `pdserve worker`, `pdserve drain`: their
flags, the settings they read (flags > PDSERVE_* > --config YAML > defaults) and how a bad one
is refused (exit 2, the setting named, no traceback), before anything starts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from decode_worker.config import DecodeWorkerConfig
from kv_transfer.pages import Role
from pdserve import cli
from pdserve.router_main import router_settings
from pdserve.worker_main import worker_settings
from prefill_worker.config import PrefillWorkerConfig

REDIS = "redis://127.0.0.1:6399/0"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def no_pdserve_env(monkeypatch):
    """A developer's own PDSERVE_* settings must not leak into these tests."""
    for name in [n for n in os.environ if n.startswith("PDSERVE_")]:
        monkeypatch.delenv(name)


def parse(*argv: str):
    return cli._parser().parse_args(list(argv))


def write_yaml(tmp_path: Path, **values) -> Path:
    path = tmp_path / "settings.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


# --- pdserve router ---------------------------------------------------------------------


def test_router_without_a_redis_url_exits_2_naming_the_variable(capsys):
    """A router alone cannot discover workers: refused before it resolves any model."""
    assert cli.main(["router", "--port", "50051"]) == 2
    err = capsys.readouterr().err
    assert "PDSERVE_REDIS_URL" in err and "redis_url" in err
    assert "Traceback" not in err


def test_router_flags_beat_env_beat_yaml(tmp_path, monkeypatch):
    config = write_yaml(tmp_path, port=7000, metrics_port=7001, routing_policy="least_load")
    monkeypatch.setenv("PDSERVE_REDIS_URL", REDIS)
    monkeypatch.setenv("PDSERVE_METRICS_PORT", "7002")
    monkeypatch.setenv("PDSERVE_AUTH_TOKEN", "s3cret")
    settings = router_settings(parse("router", "--config", str(config), "--host", "0.0.0.0"))
    assert (settings.host, settings.port, settings.metrics_port) == ("0.0.0.0", 7000, 7002)
    assert settings.routing_policy == "least_load"
    assert settings.redis_url == REDIS
    assert settings.auth_token.get_secret_value() == "s3cret"


def test_router_config_is_a_router_config_with_the_model_resolved(tmp_path, monkeypatch):
    monkeypatch.setenv("PDSERVE_REDIS_URL", REDIS)
    settings = router_settings(parse("router", "--model", "tiny", "--port", "0"))
    config = settings.router_config(tmp_path)
    assert type(config).__name__ == "RouterConfig"
    assert (config.model_dir, config.model_name, config.port) == (tmp_path, "tiny", 0)
    assert config.redis_url == REDIS


@pytest.mark.parametrize(
    "values, named",
    [
        ({"port": 70000}, "port"),
        ({"registry_ttl_s": 0}, "registry_ttl_s"),
        ({"routing_polcy": "least_load"}, "routing_polcy"),  # a typo is not ignored
    ],
)
def test_router_yaml_mistakes_exit_2_naming_the_setting(
    tmp_path, monkeypatch, capsys, values, named
):
    monkeypatch.setenv("PDSERVE_REDIS_URL", REDIS)
    config = write_yaml(tmp_path, **values)
    assert cli.main(["router", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert named in err and "Traceback" not in err


# --- pdserve worker ---------------------------------------------------------------------


def test_worker_without_a_redis_url_exits_2_naming_the_variable(capsys):
    assert cli.main(["worker", "--role", "decode"]) == 2
    assert "PDSERVE_REDIS_URL" in capsys.readouterr().err


def test_worker_role_outside_the_three_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse("worker", "--role", "router")
    assert exit_info.value.code == 2
    assert "--role" in capsys.readouterr().err


def test_worker_without_a_role_exits_2_naming_it(monkeypatch, capsys):
    monkeypatch.setenv("PDSERVE_REDIS_URL", REDIS)
    assert cli.main(["worker"]) == 2
    assert "role: Field required" in capsys.readouterr().err


def test_worker_bad_role_from_the_yaml_exits_2_naming_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PDSERVE_REDIS_URL", REDIS)
    assert cli.main(["worker", "--config", str(write_yaml(tmp_path, role="router"))]) == 2
    assert capsys.readouterr().err.startswith("pdserve worker: role:")


def test_the_pod_command_line_becomes_the_decode_actors_config(monkeypatch):
    """Flags as the chart passes them; the actor binds 0.0.0.0 and reports the pod IP."""
    monkeypatch.setenv("PDSERVE_REDIS_URL", REDIS)
    monkeypatch.setenv("PDSERVE_KV_CACHE_MIB", "64")
    args = parse(
        *("worker", "--role", "decode", "--host", "0.0.0.0", "--port", "50061"),
        *("--metrics-port", "9091", "--ray-address", "ray-head:6379"),
        *("--advertise-host", "10.1.2.3", "--model", "tiny", "--dtype", "bfloat16"),
        *("--worker-id", "decode-a", "--drain-timeout", "30"),
    )
    settings = worker_settings(args)
    assert (settings.role, settings.ray_address, settings.redis_url) == (
        Role.DECODE,
        "ray-head:6379",
        REDIS,
    )
    actor = settings.actor_config()
    assert isinstance(actor, DecodeWorkerConfig) and actor.role is Role.DECODE
    assert (actor.worker_id, actor.host, actor.port, actor.metrics_port) == (
        "decode-a",
        "0.0.0.0",
        50061,
        9091,
    )
    assert actor.advertised_host == "10.1.2.3"
    assert (actor.engine.model, actor.engine.dtype, actor.engine.kv_cache_mib) == (
        "tiny",
        "bfloat16",
        64,
    )
    assert (actor.drain_timeout_s, actor.max_grpc_threads) == (30.0, 128)


def test_a_prefill_worker_keeps_its_roles_defaults_and_is_named_after_the_host(monkeypatch):
    monkeypatch.setenv("PDSERVE_REDIS_URL", REDIS)
    monkeypatch.setattr("socket.gethostname", lambda: "pod-7")
    actor = worker_settings(parse("worker", "--role", "prefill")).actor_config()
    assert isinstance(actor, PrefillWorkerConfig)
    assert (actor.worker_id, actor.port, actor.max_grpc_threads) == ("prefill-pod-7", 50061, 64)
    assert actor.advertised_host == "127.0.0.1"


def test_the_charts_worker_yaml_keys_are_pdserve_ups_and_flags_win(tmp_path, monkeypatch):
    """The Helm chart writes worker.yaml in `pdserve up`'s vocabulary: flat engine keys."""
    monkeypatch.setenv("PDSERVE_REDIS_URL", REDIS)
    chart_keys = {
        "model": "smollm2-135m",
        "dtype": "float32",
        "page_size": 8,
        "kv_cache_mib": 256,
        "transport": "shm",
        "drain_timeout_s": 120,
        "threads_per_worker": 2,
    }
    config = write_yaml(tmp_path, role="both", lease_ttl_s=5, **chart_keys)
    settings = worker_settings(parse("worker", "--config", str(config), "--model", "tiny"))
    actor = settings.actor_config()
    assert (actor.engine.model, actor.engine.page_size, actor.engine.kv_cache_mib) == (
        "tiny",
        8,
        256,
    )
    assert (actor.engine.num_threads, actor.drain_timeout_s, actor.role) == (2, 120, Role.BOTH)


def test_an_engine_section_is_refused_for_the_flat_keys(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PDSERVE_REDIS_URL", REDIS)
    config = write_yaml(tmp_path, role="decode", engine={"kv_cache_mib": 64})
    assert cli.main(["worker", "--config", str(config)]) == 2
    assert "engine: give the engine settings flat" in capsys.readouterr().err


def test_a_collective_transport_is_refused_without_a_kv_group(monkeypatch, capsys):
    """gloo/nccl need a KV group formed by a launcher; a lone worker pod has only shm."""
    monkeypatch.setenv("PDSERVE_REDIS_URL", REDIS)
    monkeypatch.setenv("PDSERVE_TRANSPORT", "nccl")
    assert cli.main(["worker", "--role", "decode"]) == 2
    assert "transport: nccl is not held" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, env, named",
    [
        (["--host", "0.0.0.0"], {}, "advertise_host"),  # no peer can dial a wildcard
        ([], {"PDSERVE_REGISTRY_REFRESH_S": "5"}, "registry_refresh_s"),  # TTL 10: too rare
        ([], {"PDSERVE_KV_CACHE_MIB": "0"}, "kv_cache_mib"),
        ([], {"PDSERVE_RUNNER": "mock", "PDSERVE_DTYPE": "bfloat16"}, "dtype"),  # mock: fp32
        ([], {"PDSERVE_CONTROL_GRPC_THREADS": "64"}, "control_grpc_threads"),  # prefill: 64
        (["--drain-timeout", "0"], {}, "drain_timeout_s"),
        (["--port", "-1"], {}, "port"),
    ],
)
def test_worker_bad_values_exit_2_naming_the_setting(monkeypatch, capsys, argv, env, named):
    monkeypatch.setenv("PDSERVE_REDIS_URL", REDIS)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert cli.main(["worker", "--role", "prefill", *argv]) == 2
    err = capsys.readouterr().err
    assert named in err and "Traceback" not in err


# --- pdserve drain ----------------------------------------------------------------------


@pytest.mark.parametrize("timeout", ["0", "-3", "nan", "soon"])
def test_drain_timeout_must_be_positive_seconds(capsys, timeout):
    with pytest.raises(SystemExit) as exit_info:
        parse("drain", "--timeout", timeout)
    assert exit_info.value.code == 2
    assert "--timeout" in capsys.readouterr().err


def test_drain_defaults_to_the_local_worker_port():
    args = parse("drain")
    assert (args.address, args.timeout) == ("127.0.0.1:50061", 60.0)


def test_the_router_and_drain_commands_load_neither_torch_nor_ray():
    """A router pod and a preStop hook start fast and need no GPU stack (ARCHITECTURE §2)."""
    code = (
        "import sys, pdserve.cli, pdserve.router_main, pdserve.drain_cli, router.server, "
        "engine.weights; print(' '.join(sorted(sys.modules)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    loaded = {name.split(".")[0] for name in result.stdout.split()}
    assert "pdserve" in loaded and not loaded & {"torch", "ray", "transformers"}
