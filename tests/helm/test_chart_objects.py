"""What every render case must make: lint-clean objects valid for Kubernetes, labelled, with
the image of the chart's version, config checksums, Services that stay inside but the router's,
and NOTES that say how to reach it."""

from __future__ import annotations

import hashlib

import kubernetes_validate
import pytest

from tests.helm.cases import CASES, EXAMPLES, case_values
from tests.helm.chart import EXAMPLES_DIR, RELEASE, Rendered, lint

# Custom resources: no schema in kubernetes-validate; test_chart_optional asserts their shape.
CRD_KINDS = {"ServiceMonitor", "ScaledObject"}
# The chart's floor (Chart.yaml kubeVersion) and a recent release.
KUBE_VERSIONS = ("1.27", "1.34")
INSTANCE = {"app.kubernetes.io/name": "pdserve", "app.kubernetes.io/instance": RELEASE}


def test_every_example_file_is_a_render_case():
    assert sorted(EXAMPLES) == sorted(p.name for p in EXAMPLES_DIR.glob("*.yaml"))


@pytest.mark.parametrize("case", CASES)
def test_lint_is_clean_in_strict_mode(case: str):
    report = lint(case_values(case))
    problems = [m for m in report["messages"] if m["severity"] >= 2]  # warnings and errors
    assert problems == [] and report["errors"] == []


def test_every_object_is_valid_kubernetes(rendered: Rendered):
    for obj in rendered.objects:
        if obj["kind"] in CRD_KINDS:
            continue
        for version in KUBE_VERSIONS:
            kubernetes_validate.validate(obj, version, strict=True)


def test_every_object_is_labelled_and_namespaced(rendered: Rendered):
    for obj in rendered.objects:
        labels = obj["metadata"]["labels"]
        assert labels.items() >= INSTANCE.items(), obj["metadata"]["name"]
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["app.kubernetes.io/part-of"] == "pdserve"
        assert obj["metadata"]["namespace"] == "llm"


def test_image_defaults_to_the_chart_app_version(rendered: Rendered):
    for _, pod in rendered.pod_specs():
        for c in pod["containers"]:
            if c["name"] != "redis":
                assert c["image"] == "ghcr.io/pdserve/pdserve:0.1.0"


def test_pods_carry_the_checksum_of_their_config(rendered: Rendered):
    for component, key in (
        ("router", "router.yaml"),
        ("prefill", "worker.yaml"),
        ("decode", "worker.yaml"),
    ):
        (config_map,) = rendered.component("ConfigMap", component)
        digest = hashlib.sha256(config_map["data"][key].rstrip("\n").encode()).hexdigest()
        annotations = rendered.deployment(component)["spec"]["template"]["metadata"]["annotations"]
        assert annotations["checksum/config"] == digest


def test_only_the_router_service_may_leave_the_cluster(rendered: Rendered):
    for service in rendered.of_kind("Service"):
        if service["metadata"]["name"] == "pdserve-router":
            assert service["spec"]["type"] == rendered.values["router"]["service"]["type"]
            assert [p["port"] for p in service["spec"]["ports"]] == [50051]
        else:
            assert service["spec"]["type"] == "ClusterIP", service["metadata"]["name"]


def test_notes_say_how_to_reach_the_router(rendered: Rendered):
    assert 'pdserve generate --address "$ADDRESS"' in rendered.notes
    assert "pdserve-router" in rendered.notes
