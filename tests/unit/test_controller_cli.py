"""`pdserve controller` flags: read into ControllerConfig over PDSERVE_CONTROLLER_*, errors
naming the flag with exit status 2."""

from __future__ import annotations

import argparse

import pytest
from kubernetes.config import ConfigException

from pdserve.controller import kube
from pdserve.controller.cli import add_controller, controller_config, run_controller
from pdserve.controller.discovery import MetricsService

URL = "http://router:9090/metrics"


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="pdserve controller")
    add_controller(parser)
    return parser.parse_args(list(argv))


def test_flags_become_the_config_and_unset_ones_keep_its_defaults():
    args = parse(
        "--metrics-url", URL, "--metrics-url", "http://router-1:9090/metrics", "--apply",
        "--ttft-slo", "0.5", "--max-decode", "6", "--cooldown", "30", "--namespace", "llm",
    )  # fmt: skip
    config = controller_config(args)
    assert config.metrics_urls == (URL, "http://router-1:9090/metrics")
    assert (config.apply, config.ttft_slo_s, config.max_decode) == (True, 0.5, 6)
    assert (config.cooldown_s, config.namespace, config.period_s) == (30.0, "llm", 30.0)
    assert args.run is run_controller


def test_a_metrics_service_is_read_as_host_and_port_instead_of_urls():
    config = controller_config(parse("--metrics-service", "pdserve-router-metrics:9090"))
    assert config.metrics_urls == ()
    assert config.router_service == MetricsService("pdserve-router-metrics", 9090)


def test_environment_fills_what_no_flag_gives(monkeypatch):
    monkeypatch.setenv("PDSERVE_CONTROLLER_PERIOD_S", "5")
    monkeypatch.setenv("PDSERVE_CONTROLLER_MAX_PREFILL", "3")
    config = controller_config(parse("--metrics-url", URL, "--max-prefill", "4"))
    assert (config.period_s, config.max_prefill, config.apply) == (5.0, 4, False)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ((), "--metrics-url: give --metrics-url or --metrics-service (one is required)"),
        (("--metrics-url", "router:9090"), "--metrics-url: expected an http(s):// URL"),
        (
            ("--metrics-url", URL, "--metrics-service", "router:9090"),
            "--metrics-service: give --metrics-service or --metrics-url, not both",
        ),
        (("--metrics-service", "router"), "--metrics-service: expected host:port"),
        (("--metrics-service", "http://router:9090"), "--metrics-service: expected host:port"),
        (("--metrics-service", "router:0"), "--metrics-service: expected host:port"),
        (("--min-prefill", "3", "--max-prefill", "2"), "--max-prefill: must be ≥ --min-prefill"),
        (("--min-decode", "0"), "--min-decode: Input should be greater than or equal to 1"),
        (("--target-utilization", "1.5"), "--target-utilization: Input should be less than"),
        (("--max-total-workers", "2", "--min-decode", "2"), "--max-total-workers: must be ≥"),
    ],
)
def test_a_bad_flag_is_named_and_exits_2(argv, message, capsys):
    urls = () if not argv or argv[0].startswith("--metrics-") else ("--metrics-url", URL)
    assert run_controller(parse(*urls, *argv)) == 2
    error = capsys.readouterr().err
    assert error.startswith("pdserve controller: ") and message in error


def test_no_kubernetes_configuration_exits_1(monkeypatch, capsys):
    def no_config():
        raise ConfigException("no kubeconfig")

    monkeypatch.setattr(kube, "connect_apps_api", no_config)
    assert run_controller(parse("--metrics-url", URL, "--metrics-port", "0")) == 1
    assert "no Kubernetes configuration" in capsys.readouterr().err


def test_pdserve_controller_is_a_pdserve_command(capsys):
    from pdserve.cli import main

    assert main(["controller", "--metrics-url", "x"]) == 2
    assert "--metrics-url" in capsys.readouterr().err
