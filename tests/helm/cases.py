"""The chart's render cases: the defaults with the one required value, every example file, and
every optional object switched on at once."""

from __future__ import annotations

from typing import Any

from tests.helm.chart import MINIMAL_VALUES, example_values, merged

EXAMPLES = ("1p1d.yaml", "2p1d.yaml", "external-redis-tls.yaml", "cpu-eval.yaml")

# Every optional object on at once: the controller (dry run, KEDA excludes applying),
# ServiceMonitor, KEDA ScaledObjects, the router's HPA, a TLS Redis CA, the tokens.
ALL_OPTIONAL: dict[str, Any] = {
    "redis": {"external": {"tls": {"caSecret": "redis-ca"}}},
    "auth": {"public": {"existingSecret": "api-token"}, "internal": {"existingSecret": "int"}},
    "ray": {"auth": {"existingSecret": "ray-token"}},
    "controller": {"enabled": True},
    "serviceMonitor": {"enabled": True},
    "keda": {"enabled": True},
    "router": {"autoscaling": {"enabled": True}},
    "workers": {"modelCache": {"existingClaim": "models"}},
}


def case_values(case: str) -> dict[str, Any]:
    if case == "defaults":
        return MINIMAL_VALUES
    if case == "all-optional":
        return merged(MINIMAL_VALUES, ALL_OPTIONAL)
    return example_values(case)


CASES = ("defaults", *EXAMPLES, "all-optional")
