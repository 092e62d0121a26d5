"""Values the chart refuses to render, each with a message naming the value to fix: by
values.schema.json (Helm checks it before any template runs) or by a template's `fail`."""

from __future__ import annotations

from typing import Any

import helm_python as helm
import pytest

from tests.helm.chart import MINIMAL_VALUES, lint, merged, render

REFUSED: list[tuple[str, dict[str, Any], str]] = [
    ("ratio with a dash", {"pools": {"ratio": "3-1", "total": 4}}, "/pools/ratio"),
    ("ratio of letters", {"pools": {"ratio": "a:b", "total": 4}}, "/pools/ratio"),
    ("ratio with a zero side", {"pools": {"ratio": "1:0", "total": 4}}, "pools.ratio: both sides"),
    ("ratio without total", {"pools": {"ratio": "1:3"}}, "pools.total: needed"),
    ("total without ratio", {"pools": {"total": 4}}, "pools.total: needs pools.ratio"),
    ("total of one", {"pools": {"ratio": "1:1", "total": 1}}, "/pools/total"),
    ("unknown top-level value", {"replicaCount": 3}, "additional properties 'replicaCount'"),
    ("misspelt pool key", {"prefill": {"gpu": 2}}, "additional properties 'gpu'"),
    ("negative gpus", {"decode": {"gpus": -1}}, "/decode/gpus"),
    ("string replicas", {"decode": {"replicas": "3"}}, "/decode/replicas"),
    (
        "grace period inside the drain",
        {"decode": {"drainTimeoutSeconds": 300, "terminationGracePeriodSeconds": 300}},
        "decode.terminationGracePeriodSeconds (300) must exceed decode.drainTimeoutSeconds",
    ),
    (
        "KEDA and an applying controller",
        {"keda": {"enabled": True}, "controller": {"enabled": True, "apply": True}},
        "keda.enabled and controller.apply",
    ),
    (
        "Redis URL with a password",
        {"redis": {"external": {"url": "redis://:hunter2@redis.db:6379/0"}}},
        "redis.external.url carries credentials",
    ),
]


@pytest.mark.parametrize(
    ("values", "message"), [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED]
)
def test_bad_values_are_refused_with_the_value_named(values: dict[str, Any], message: str):
    with pytest.raises(helm.HelmError) as refused:
        render(merged(MINIMAL_VALUES, values))
    assert message in str(refused.value)


def test_external_redis_needs_a_url_or_a_secret():
    with pytest.raises(helm.HelmRenderError) as refused:
        render({})
    assert "redis.external.url or redis.external.existingSecret is required" in str(refused.value)


def test_in_chart_redis_excludes_an_external_one():
    with pytest.raises(helm.HelmRenderError, match="not both"):
        render(merged(MINIMAL_VALUES, {"redis": {"internal": {"enabled": True}}}))


def test_lint_reports_the_refusal_as_an_error():
    report = lint({"pools": {"ratio": "3-1", "total": 4}, **MINIMAL_VALUES})
    assert any("/pools/ratio" in error for error in report["errors"])
