"""ClusterConfig: pools sized by ratio, the new router/worker settings, source precedence
(flags > PDSERVE_* > YAML > defaults), and the CLI flags that feed it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pdserve import cli, cli_output
from pdserve.config import ClusterConfig, split_ratio
from pdserve.v1 import generation_pb2
from router.config import PolicyName


@pytest.fixture(autouse=True)
def no_pdserve_env(monkeypatch):
    """A developer's own PDSERVE_* settings must not leak into these tests."""
    import os

    for name in [n for n in os.environ if n.startswith("PDSERVE_")]:
        monkeypatch.delenv(name)


def write_yaml(tmp_path: Path, **values) -> Path:
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


@pytest.mark.parametrize(
    "ratio, num_workers, sizes",
    [
        ((1, 3), 4, (1, 3)),
        ((1, 3), 6, (1, 5)),  # 1.5 prefill: a half goes to decode
        ((1, 1), 5, (2, 3)),
        ((1, 9), 4, (1, 3)),  # 0.4 prefill: at least one of each
        ((9, 1), 4, (3, 1)),
        ((2, 3), 10, (4, 6)),
        ((1, 1), 2, (1, 1)),
    ],
)
def test_a_ratio_splits_the_total_nearest_first_then_one_of_each(ratio, num_workers, sizes):
    assert split_ratio(ratio, num_workers) == sizes


def test_ratio_and_total_set_the_pool_sizes():
    config = ClusterConfig(ratio="1:3", num_workers=8, num_colocated=1)
    assert (config.num_prefill, config.num_decode, config.num_colocated) == (2, 6, 1)


@pytest.mark.parametrize(
    "settings, field",
    [
        ({"ratio": "0:1", "num_workers": 4}, "ratio"),
        ({"ratio": "a:b", "num_workers": 4}, "ratio"),
        ({"ratio": "1:3:2", "num_workers": 4}, "ratio"),
        ({"ratio": "1:3"}, "ratio"),
        ({"num_workers": 4}, "num_workers"),
        ({"ratio": "1:3", "num_workers": 1}, "num_workers"),
        ({"ratio": "1:3", "num_workers": "many"}, "num_workers"),
        ({"ratio": "1:3", "num_workers": 4, "num_prefill": 2}, "ratio"),
    ],
)
def test_bad_ratio_settings_are_rejected_naming_the_field(settings, field):
    with pytest.raises(ValueError, match=f"Value error, {field}: "):
        ClusterConfig(**settings)


def test_ratio_flags_replace_the_yaml_pool_sizes(tmp_path):
    path = write_yaml(tmp_path, num_prefill=3, num_decode=3, kv_cache_mib=64)
    config = ClusterConfig.load(path, ratio="1:3", num_workers=4)
    assert (config.num_prefill, config.num_decode, config.kv_cache_mib) == (1, 3, 64)


def test_size_flags_replace_a_ratio_from_the_environment(monkeypatch):
    monkeypatch.setenv("PDSERVE_RATIO", "1:3")
    monkeypatch.setenv("PDSERVE_NUM_WORKERS", "8")
    config = ClusterConfig.load(num_prefill=2, num_decode=1)
    assert (config.num_prefill, config.num_decode, config.ratio) == (2, 1, None)


def test_an_environment_ratio_takes_its_total_from_the_flags(monkeypatch, tmp_path):
    monkeypatch.setenv("PDSERVE_RATIO", "1:1")
    config = ClusterConfig.load(write_yaml(tmp_path, num_prefill=5), num_workers=4)
    assert (config.num_prefill, config.num_decode) == (2, 2)


def test_flags_beat_environment_beat_yaml_for_the_new_settings(monkeypatch, tmp_path):
    path = write_yaml(tmp_path, routing_policy="round_robin", redis_url="redis://yaml:1/0")
    monkeypatch.setenv("PDSERVE_REDIS_URL", "redis://env:2/0")
    monkeypatch.setenv("PDSERVE_DRAIN_TIMEOUT_S", "5")
    config = ClusterConfig.load(path, drain_timeout_s=7.5)
    assert config.routing_policy is PolicyName.ROUND_ROBIN
    assert (config.redis_url, config.drain_timeout_s) == ("redis://env:2/0", 7.5)


def test_defaults_leave_metrics_off_and_drain_at_the_worker_default():
    config = ClusterConfig()
    assert (config.metrics_port, config.worker_metrics_port) == (None, None)
    assert (config.drain_quiet_s, config.drain_timeout_s) == (3.0, 60.0)
    assert config.routing_policy is PolicyName.PREFIX_AWARE and config.redis_url == ""


def test_worker_metrics_means_an_ephemeral_port_on_every_worker():
    assert ClusterConfig(worker_metrics=True).worker_metrics_port == 0


@pytest.mark.parametrize("settings", [{"metrics_port": 70000}, {"drain_timeout_s": 0}])
def test_out_of_range_settings_are_rejected(settings):
    with pytest.raises(ValueError, match=next(iter(settings))):
        ClusterConfig(**settings)


def test_up_flags_reach_the_config():
    args = cli._parser().parse_args(
        "up --ratio 1:3 --workers 4 --policy least_load --redis-url redis://r:6379/0 "
        "--metrics-port 0 --worker-metrics --drain-timeout 9".split()
    )
    config = cli.up_config(args)
    assert (config.num_prefill, config.num_decode, config.num_colocated) == (1, 3, 0)
    assert config.routing_policy is PolicyName.LEAST_LOAD
    assert (config.redis_url, config.metrics_port, config.worker_metrics) == (
        "redis://r:6379/0",
        0,
        True,
    )
    assert config.drain_timeout_s == 9.0


def test_up_without_worker_metrics_flag_leaves_the_setting_to_other_sources(monkeypatch):
    monkeypatch.setenv("PDSERVE_WORKER_METRICS", "true")
    assert cli.up_config(cli._parser().parse_args(["up"])).worker_metrics is True


def test_scale_sets_only_the_sizes_given():
    request = cli.scale_request(cli._parser().parse_args(["scale", "--decode", "3"]))
    assert request.HasField("num_decode") and request.num_decode == 3
    assert not request.HasField("num_prefill") and not request.HasField("num_colocated")


def test_scale_to_zero_is_sent_as_zero_not_as_unchanged():
    request = cli.scale_request(cli._parser().parse_args(["scale", "--prefill", "0"]))
    assert request.HasField("num_prefill") and request.num_prefill == 0


def test_status_table_shows_each_workers_drain_state_and_metrics_port(capsys):
    info = generation_pb2.ServerInfo(
        workers=[
            generation_pb2.WorkerInfo(worker_id="prefill-0", metrics_port=9101),
            generation_pb2.WorkerInfo(worker_id="prefill-1", draining=True),
            generation_pb2.WorkerInfo(worker_id="decode-0", draining=True, drained=True),
        ]
    )
    cli_output.print_status_table(info)
    rows = {line.split()[1]: line for line in capsys.readouterr().out.splitlines() if "-" in line}
    assert "9101" in rows["prefill-0"] and "draining" not in rows["prefill-0"]
    assert "draining" in rows["prefill-1"]
    assert "drained" in rows["decode-0"]


@pytest.mark.parametrize("device", ["auto", "cuda"])
def test_a_local_cluster_may_move_kv_over_cuda_ipc_unless_its_workers_are_on_cpu(device):
    assert ClusterConfig(transport="cuda_ipc", device=device).transport == "cuda_ipc"


@pytest.mark.parametrize("settings", [{"device": "cpu"}, {"runner": "mock"}])
def test_cuda_ipc_is_refused_naming_transport_when_the_kv_caches_stay_on_cpu(settings):
    """device cpu, or the mock runner, whose KV cache is on cpu whatever the device."""
    with pytest.raises(ValueError, match="transport: cuda_ipc"):
        ClusterConfig(transport="cuda_ipc", **settings)


@pytest.mark.parametrize("transport", ["local", "nccl"])
def test_transports_a_local_cluster_cannot_use_are_refused(transport):
    with pytest.raises(ValueError, match="transport: a local cluster"):
        ClusterConfig(transport=transport)


def test_up_takes_transport_cuda_ipc():
    args = cli._parser().parse_args(["up", "--transport", "cuda_ipc"])
    assert cli.up_config(args).transport == "cuda_ipc"
