"""The pods of every render case: GPU workers that run the worker command, drain in preStop and
have a memory-backed /dev/shm; gRPC health probes (on the plaintext health port where the gRPC
port is TLS); PDBs; the restricted Pod Security Standard;
no service links; no API token but the controller's; secrets only by secretKeyRef."""

from __future__ import annotations

from tests.helm.chart import POOLS, Obj, Rendered, component_of, container

# Volume types the restricted Pod Security Standard allows.
RESTRICTED_VOLUMES = {"configMap", "emptyDir", "secret", "persistentVolumeClaim", "projected"}
HEALTH_PORT = 8081
INTERNAL_TLS_FLAGS = [
    "--tls-ca", "/etc/pdserve/tls/internal/ca.crt",
    "--tls-cert", "/etc/pdserve/tls/internal/tls.crt",
    "--tls-key", "/etc/pdserve/tls/internal/tls.key",
    "--tls-server-name", "pdserve-internal",
]  # fmt: skip


def tls_on(rendered: Rendered, edge: str) -> bool:
    return bool(rendered.values["tls"][edge]["secretName"])


def test_workers_get_the_gpus_their_pool_asks_for(rendered: Rendered):
    for pool in POOLS:
        gpus = rendered.values[pool]["gpus"]
        limits = container(rendered.deployment(pool))["resources"].get("limits", {})
        assert limits.get("nvidia.com/gpu") == (gpus if gpus > 0 else None)


def test_workers_run_the_worker_command_on_their_own_ray_node(rendered: Rendered):
    for pool in POOLS:
        worker = container(rendered.deployment(pool))
        assert worker["command"] == ["pdserve"]
        assert worker["args"] == [
            "worker", "--role", pool, "--host", "0.0.0.0", "--port", "50061",
            "--kv-tcp-port", "50071", "--metrics-port", "9091", "--ray-address", "pdserve-ray-head:6379",
            "--advertise-host", "$(POD_IP)", "--config", "/etc/pdserve/worker.yaml",
        ]  # fmt: skip
        pod_ip = next(env for env in worker["env"] if env["name"] == "POD_IP")
        assert pod_ip["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}


def test_prefill_workers_expose_their_kv_stream_port(rendered: Rendered):
    for pool in POOLS:
        ports = {
            p["name"]: p["containerPort"] for p in container(rendered.deployment(pool))["ports"]
        }
        expected = {"grpc": 50061, "metrics": 9091} | ({"kv": 50071} if pool == "prefill" else {})
        if tls_on(rendered, "internal"):
            expected["health"] = HEALTH_PORT
        assert ports == expected


def test_workers_drain_in_prestop_within_their_grace_period(rendered: Rendered):
    for pool in POOLS:
        deployment = rendered.deployment(pool)
        drain_s = rendered.values[pool]["drainTimeoutSeconds"]
        prestop = container(deployment)["lifecycle"]["preStop"]["exec"]["command"]
        assert prestop == [
            "pdserve", "drain", "--address", "127.0.0.1:50061", "--timeout", str(drain_s),
            *(INTERNAL_TLS_FLAGS if tls_on(rendered, "internal") else []),
        ]  # fmt: skip
        assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > drain_s


def test_workers_have_a_memory_backed_dev_shm(rendered: Rendered):
    for pool in POOLS:
        pod = rendered.deployment(pool)["spec"]["template"]["spec"]
        (shm,) = [v for v in pod["volumes"] if v["name"] == "shm"]
        assert shm["emptyDir"] == {
            "medium": "Memory",
            "sizeLimit": rendered.values[pool]["shmSize"],
        }
        mounts = {
            m["mountPath"]: m["name"] for m in container(rendered.deployment(pool))["volumeMounts"]
        }
        assert mounts["/dev/shm"] == "shm"


def probe_kind(probe: Obj) -> tuple[str, int, str | None]:
    if "grpc" in probe:
        return "grpc", probe["grpc"]["port"], probe["grpc"]["service"]
    return "tcp", probe["tcpSocket"]["port"], None


def test_workers_probe_grpc_health_on_the_worker_port(rendered: Rendered):
    # Kubernetes' gRPC probes cannot speak TLS: with internal TLS they ask the health port.
    port = HEALTH_PORT if tls_on(rendered, "internal") else 50061
    for pool in POOLS:
        worker = container(rendered.deployment(pool))
        assert probe_kind(worker["startupProbe"]) == ("grpc", port, "")
        # The worker's own service goes NOT_SERVING while it drains: out of its endpoints.
        assert probe_kind(worker["readinessProbe"]) == ("grpc", port, "pdserve.v1.Worker")
        assert probe_kind(worker["livenessProbe"]) == ("grpc", port, "")


def test_router_is_ready_by_grpc_health_and_alive_by_its_liveness_service(rendered: Rendered):
    router = container(rendered.deployment("router"))
    port = HEALTH_PORT if tls_on(rendered, "public") else 50051
    assert probe_kind(router["readinessProbe"]) == ("grpc", port, "")
    # The router is NOT_SERVING ("") while it has no workers: that must not restart it, so
    # it is alive by its "liveness" service, SERVING whatever the workers do.
    assert probe_kind(router["startupProbe"]) == ("grpc", port, "liveness")
    assert probe_kind(router["livenessProbe"]) == ("grpc", port, "liveness")


def test_router_pools_have_pdbs_selecting_their_pods(rendered: Rendered):
    for component in ("router", *POOLS):
        (pdb,) = rendered.component("PodDisruptionBudget", component)
        pod_labels = rendered.deployment(component)["spec"]["template"]["metadata"]["labels"]
        assert pdb["spec"]["maxUnavailable"] == rendered.values[component]["pdb"]["maxUnavailable"]
        assert pod_labels.items() >= pdb["spec"]["selector"]["matchLabels"].items()


def test_every_pod_and_container_is_restricted(rendered: Rendered):
    for name, pod in rendered.pod_specs():
        context = pod["securityContext"]
        assert context["runAsNonRoot"] is True and context["runAsUser"] == 1000, name
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert not {"hostNetwork", "hostPID", "hostIPC"} & pod.keys(), name
        for volume in pod.get("volumes", []):
            assert set(volume) - {"name"} <= RESTRICTED_VOLUMES, (name, volume)
        for c in pod["containers"] + pod.get("initContainers", []):
            sc = c["securityContext"]
            assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 1000, name
            assert sc["allowPrivilegeEscalation"] is False and sc["privileged"] is False, name
            assert sc["capabilities"] == {"drop": ["ALL"]}, name
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, name
            assert "/tmp" in {m["mountPath"] for m in c["volumeMounts"]}, name


def test_no_pod_gets_service_link_variables(rendered: Rendered):
    # A Service "pdserve-router" would otherwise put PDSERVE_ROUTER_PORT=tcp://… in every
    # pod's environment, which the router's settings would read as its port.
    for name, pod in rendered.pod_specs():
        assert pod["enableServiceLinks"] is False, name


def test_only_the_controller_gets_an_api_token(rendered: Rendered):
    for name, pod in rendered.pod_specs():
        is_controller = name == "pdserve-controller"
        assert pod["automountServiceAccountToken"] is is_controller, name
    (shared,) = [sa for sa in rendered.of_kind("ServiceAccount") if component_of(sa) is None]
    assert shared["automountServiceAccountToken"] is False
    router_pod = rendered.deployment("router")["spec"]["template"]["spec"]
    assert router_pod["serviceAccountName"] == shared["metadata"]["name"]


def env_vars(rendered: Rendered) -> list[tuple[str, Obj]]:
    return [
        (name, env)
        for name, pod in rendered.pod_specs()
        for c in pod["containers"]
        for env in c.get("env", [])
    ]


def test_redis_url_and_tokens_only_come_from_secrets(rendered: Rendered):
    sensitive = (
        "PDSERVE_REDIS_URL",
        "PDSERVE_AUTH_TOKEN",
        "PDSERVE_INTERNAL_AUTH_TOKEN",
        "RAY_AUTH_TOKEN",
    )
    seen = set()
    for name, env in env_vars(rendered):
        if env["name"] in sensitive:
            assert "value" not in env and "secretKeyRef" in env["valueFrom"], (name, env)
            seen.add(env["name"])
    assert "PDSERVE_REDIS_URL" in seen


def test_the_only_secret_made_holds_a_redis_url_without_credentials(rendered: Rendered):
    secrets = rendered.of_kind("Secret")
    redis = rendered.values["redis"]
    if redis["external"]["existingSecret"]:
        assert secrets == []  # the URL stays in the user's Secret
        return
    (secret,) = secrets
    assert secret["metadata"]["name"] == "pdserve-redis-url"
    (url,) = secret["stringData"].values()
    assert url.startswith("redis://") and "@" not in url
    if redis["internal"]["enabled"]:
        assert url == "redis://pdserve-redis.llm.svc:6379/0"
