"""NetworkPolicies: default deny for every pod of the release; the router's gRPC port open to
everyone (or routerIngressFrom); /metrics to Prometheus; worker gRPC to the routers; prefill
workers' KV stream port to decode workers; the Ray
head's pinned ports to the workers; the in-chart Redis to the router and workers."""

from __future__ import annotations

from tests.helm.chart import MINIMAL_VALUES, Obj, Rendered, container, merged, render, selects


def policies(rendered: Rendered) -> dict[str, Obj]:
    return {
        p["metadata"]["name"].removeprefix("pdserve-"): p for p in rendered.of_kind("NetworkPolicy")
    }


def peer_components(rule: Obj) -> set[str]:
    """The components of this release that a rule's `from` admits (by podSelector)."""
    found: set[str] = set()
    for peer in rule.get("from", []):
        for expr in peer.get("podSelector", {}).get("matchExpressions", []):
            if expr["key"] == "app.kubernetes.io/component":
                found.update(expr["values"])
    return found


def rules_by_port(policy: Obj) -> dict[int | None, Obj]:
    """Ingress rules keyed by their single port (None: a rule for every port)."""
    rules: dict[int | None, Obj] = {}
    for rule in policy["spec"]["ingress"]:
        ports = rule.get("ports") or [{"port": None}]
        for port in ports:
            rules[port["port"]] = rule
    return rules


def test_every_pod_is_behind_the_default_deny_policy(rendered: Rendered):
    deny = policies(rendered)["default-deny"]["spec"]
    assert deny["policyTypes"] == ["Ingress"] and deny["ingress"] == []
    for deployment in rendered.of_kind("Deployment"):
        assert selects(deny["podSelector"], deployment["spec"]["template"]["metadata"]["labels"])


def test_router_grpc_is_the_only_port_open_to_everyone(rendered: Rendered):
    router = rules_by_port(policies(rendered)["router"])
    expected_from = rendered.values["networkPolicy"]["routerIngressFrom"]
    assert router[50051].get("from", []) == expected_from
    metrics_from = router[9090]["from"]
    assert (
        metrics_from[0]["namespaceSelector"]
        == rendered.values["networkPolicy"]["metricsNamespaceSelector"]
    )
    assert peer_components(router[9090]) == {"controller"}


def test_workers_admit_the_router_prometheus_and_the_ray_fabric_only(rendered: Rendered):
    workers = rules_by_port(policies(rendered)["workers"])
    assert peer_components(workers[50061]) == {"router"}
    assert peer_components(workers[50071]) == {"decode"}  # KV streams, decode ← prefill
    assert "namespaceSelector" in workers[9091]["from"][0]
    assert peer_components(workers[None]) == {"ray-head", "prefill", "decode"}
    for rule in workers.values():
        assert rule.get("from"), "no worker port is open to everyone"


def test_ray_head_admits_workers_on_its_pinned_ports_only(rendered: Rendered):
    head = policies(rendered)["ray-head"]["spec"]["ingress"]
    (rule,) = head
    ports = {(p["port"], p.get("endPort")) for p in rule["ports"]}
    assert ports == {
        (6379, None), (6380, None), (6381, None), (6382, None), (6383, None), (6384, None),
        (10001, None), (10002, 10100),
    }  # fmt: skip
    assert peer_components(rule) == {"prefill", "decode"}
    args = container(rendered.deployment("ray-head"))["args"]
    assert {"--port=6379", "--node-manager-port=6380", "--object-manager-port=6381"} <= set(args)
    assert {"--head", "--num-cpus=0", "--dashboard-host=127.0.0.1", "--block"} <= set(args)


def test_in_chart_redis_is_reachable_from_router_and_workers_only():
    rendered = render({"redis": {"internal": {"enabled": True}}})
    policy = rendered.named("NetworkPolicy", "pdserve-redis")
    (rule,) = policy["spec"]["ingress"]
    assert peer_components(rule) == {"router", "prefill", "decode"}
    assert rule["ports"] == [{"port": 6379, "protocol": "TCP"}]


def test_network_policies_can_be_left_to_the_platform():
    rendered = render(merged(MINIMAL_VALUES, {"networkPolicy": {"enabled": False}}))
    assert rendered.of_kind("NetworkPolicy") == []
