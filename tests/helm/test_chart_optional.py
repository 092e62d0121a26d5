"""The optional objects (ServiceMonitor, KEDA, the router's HPA, the ratio controller, a TLS
Redis CA) and what values change: config files, checksums, GPU counts."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tests.helm.cases import case_values
from tests.helm.chart import MINIMAL_VALUES, POOLS, Rendered, container, merged, render, selects


@pytest.fixture(scope="module")
def all_optional() -> Rendered:
    return render(case_values("all-optional"))


def test_service_monitor_scrapes_router_and_workers_metrics(all_optional: Rendered):
    (monitor,) = all_optional.of_kind("ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics"]
    selector = monitor["spec"]["selector"]
    scraped = {
        s["metadata"]["name"]
        for s in all_optional.of_kind("Service")
        if selects(selector, s["metadata"]["labels"])
    }
    assert scraped == {"pdserve-router-metrics", "pdserve-prefill", "pdserve-decode"}


def test_keda_scales_the_pools_which_then_carry_no_replicas(all_optional: Rendered):
    objects = {
        so["spec"]["scaleTargetRef"]["name"]: so for so in all_optional.of_kind("ScaledObject")
    }
    assert set(objects) == {"pdserve-prefill", "pdserve-decode"}
    for pool in POOLS:
        scaled = objects[f"pdserve-{pool}"]
        assert scaled["apiVersion"] == "keda.sh/v1alpha1"
        assert scaled["spec"]["scaleTargetRef"]["kind"] == "Deployment"
        (trigger,) = scaled["spec"]["triggers"]
        assert (
            trigger["type"] == "prometheus"
            and f'app_kubernetes_io_component="{pool}"' in trigger["metadata"]["query"]
        )
        assert "replicas" not in all_optional.deployment(pool)["spec"]


def test_router_hpa_owns_the_router_replicas(all_optional: Rendered):
    (hpa,) = all_optional.of_kind("HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "pdserve-router"
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 8)
    assert "replicas" not in all_optional.deployment("router")["spec"]


def test_controller_has_exactly_its_rbac_and_dry_runs_by_default(all_optional: Rendered):
    controller = all_optional.deployment("controller")
    pod = controller["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "pdserve-controller"
    assert container(controller)["args"] == [
        "controller", "--namespace", "llm", "--prefill-deployment", "pdserve-prefill",
        "--decode-deployment", "pdserve-decode",
        "--metrics-service", "pdserve-router-metrics:9090",
    ]  # fmt: skip
    (role,) = all_optional.of_kind("Role")
    rules = {(tuple(r["apiGroups"]), tuple(r["resources"])): r for r in role["rules"]}
    assert rules[(("apps",), ("deployments",))]["verbs"] == ["get", "list", "watch"]
    assert rules[(("",), ("pods",))]["verbs"] == ["get", "list", "watch"]
    scale = rules[(("apps",), ("deployments/scale",))]
    assert scale["verbs"] == ["get", "patch"]
    assert scale["resourceNames"] == ["pdserve-prefill", "pdserve-decode"]
    (binding,) = all_optional.of_kind("RoleBinding")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "pdserve-controller", "namespace": "llm"}
    ]


def test_controller_finds_every_ready_router_through_the_headless_metrics_service(
    all_optional: Rendered,
):
    # The name the controller resolves is the router-metrics Service, short (as the Ray head's
    # address: the pod's search domains add the namespace), at its metrics port; headless, so
    # it resolves to each ready router pod, not to one virtual IP.
    args = container(all_optional.deployment("controller"))["args"]
    host, port = args[args.index("--metrics-service") + 1].split(":")
    service = all_optional.named("Service", host)["spec"]
    assert (service["clusterIP"], service["publishNotReadyAddresses"]) == ("None", False)
    assert [(p["name"], p["port"]) for p in service["ports"]] == [("metrics", int(port))]
    router_pod = all_optional.deployment("router")["spec"]["template"]["metadata"]["labels"]
    assert selects({"matchLabels": service["selector"]}, router_pod)
    assert "--metrics-url" not in args


def test_controller_applies_only_when_asked():
    rendered = render(merged(MINIMAL_VALUES, {"controller": {"enabled": True, "apply": True}}))
    assert container(rendered.deployment("controller"))["args"][-1] == "--apply"


def test_redis_tls_ca_is_mounted_where_the_url_points(all_optional: Rendered):
    # One projected volume at /etc/pdserve: the config file and redis-tls/ca.crt beside it.
    for component, config_file in (("router", "router.yaml"), *((p, "worker.yaml") for p in POOLS)):
        deployment = all_optional.deployment(component)
        mounts = {m["name"]: m["mountPath"] for m in container(deployment)["volumeMounts"]}
        assert mounts["config"] == "/etc/pdserve"
        volumes = deployment["spec"]["template"]["spec"]["volumes"]
        (config,) = [v for v in volumes if v["name"] == "config"]
        config_map, secret = config["projected"]["sources"]
        assert config_map["configMap"]["items"] == [{"key": config_file, "path": config_file}]
        assert secret["secret"] == {
            "name": "redis-ca",
            "items": [{"key": "ca.crt", "path": "redis-tls/ca.crt"}],
        }


def test_changing_router_config_rolls_only_the_router():
    before = render(MINIMAL_VALUES)
    after = render(merged(MINIMAL_VALUES, {"router": {"config": {"routing_policy": "least_load"}}}))

    def checksum(r: Rendered, component: str) -> str:
        return r.deployment(component)["spec"]["template"]["metadata"]["annotations"][
            "checksum/config"
        ]

    assert checksum(before, "router") != checksum(after, "router")
    assert checksum(before, "decode") == checksum(after, "decode")


def test_worker_config_carries_model_and_kv_settings():
    values: dict[str, Any] = {
        "model": {"name": "tiny", "dtype": "float32"},
        "decode": {"kvCacheMiB": 777},
    }
    rendered = render(merged(MINIMAL_VALUES, values))
    (config_map,) = rendered.component("ConfigMap", "decode")
    assert yaml.safe_load(config_map["data"]["worker.yaml"]) == {
        "model": "tiny", "dtype": "float32", "page_size": 16, "kv_cache_mib": 777,
        "drain_timeout_s": 300,
    }  # fmt: skip


def test_each_pool_gets_its_own_gpu_count():
    rendered = render(merged(MINIMAL_VALUES, {"prefill": {"gpus": 2}, "decode": {"gpus": 8}}))
    for pool, gpus in (("prefill", 2), ("decode", 8)):
        limits = container(rendered.deployment(pool))["resources"]["limits"]
        assert limits == {"memory": "64Gi", "nvidia.com/gpu": gpus}
