"""The chart, rendered and linted by helm-python-sdk (Helm v4's own engine, no helm binary),
and the objects it makes, read back as dicts.

`render` is what `helm template` does (values coalesced over the chart's defaults, checked
against values.schema.json, templates run); `lint` is `helm lint --strict`. Both raise or
report exactly what Helm would.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

CHART_DIR = Path(__file__).resolve().parents[2] / "deploy" / "helm" / "pdserve"
EXAMPLES_DIR = CHART_DIR / "examples"
RELEASE = "pdserve"
NAMESPACE = "llm"
KUBE_VERSION = "v1.33.0"

# The least an install needs: where Redis is (a URL without credentials).
MINIMAL_VALUES: dict[str, Any] = {"redis": {"external": {"url": "redis://redis.db.svc:6379/0"}}}

POOLS = ("prefill", "decode")

Obj = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Rendered:
    """One render: the values given, the defaults they were merged over, the objects, NOTES."""

    values: dict[str, Any]
    objects: list[Obj]
    notes: str

    def of_kind(self, kind: str) -> list[Obj]:
        return [obj for obj in self.objects if obj["kind"] == kind]

    def named(self, kind: str, name: str) -> Obj:
        matches = [obj for obj in self.of_kind(kind) if obj["metadata"]["name"] == name]
        assert len(matches) == 1, f"{kind}/{name}: {len(matches)} rendered"
        return matches[0]

    def component(self, kind: str, component: str) -> list[Obj]:
        return [obj for obj in self.of_kind(kind) if component_of(obj) == component]

    def deployment(self, component: str) -> Obj:
        (deployment,) = self.component("Deployment", component)
        return deployment

    def pod_specs(self) -> Iterator[tuple[str, Obj]]:
        """(Deployment name, pod spec) of every workload the chart makes."""
        for deployment in self.of_kind("Deployment"):
            yield deployment["metadata"]["name"], deployment["spec"]["template"]["spec"]


def component_of(obj: Obj) -> str | None:
    return obj["metadata"].get("labels", {}).get("app.kubernetes.io/component")


def container(deployment: Obj, name: str | None = None) -> Obj:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    if name is None:
        (only,) = containers
        return only
    (match,) = [c for c in containers if c["name"] == name]
    return match


def merged(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`override` over a copy of `base`, key by key in nested maps (as Helm merges -f files)."""
    result = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merged(result[key], value)
        else:
            result[key] = copy.deepcopy(value)
    return result


def example_values(name: str) -> dict[str, Any]:
    """An example values file, parsed by Helm's own YAML reader."""
    return helm.values_from_yaml((EXAMPLES_DIR / name).read_text())


def render(values: dict[str, Any]) -> Rendered:
    """Renders like `helm template pdserve deploy/helm/pdserve -n llm`; raises HelmError."""
    with helm.Chart.load(CHART_DIR) as chart:
        manifests = chart.render(values=values, name=RELEASE, namespace=NAMESPACE)
        coalesced = chart.merge_values(values)
    objects: list[Obj] = []
    notes = ""
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            notes = text
            continue
        objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return Rendered(coalesced, objects, notes)


def lint(values: dict[str, Any]) -> dict[str, Any]:
    """`helm lint --strict` with these values: {"messages": [...], "errors": [...]}."""
    return helm.lint(CHART_DIR, values, strict=True, namespace=NAMESPACE, kube_version=KUBE_VERSION)


def selects(selector: Obj, labels: dict[str, str]) -> bool:
    """Whether a LabelSelector (matchLabels, In expressions) matches `labels`."""
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    return all(
        labels.get(expr["key"]) in expr["values"] for expr in selector.get("matchExpressions", [])
    )
