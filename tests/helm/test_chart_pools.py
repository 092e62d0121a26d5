"""Pool sizes: explicit replicas are rendered as given; a ratio splits the total the way
pdserve/config.py's split_ratio does (nearest whole number, a half to decode, ≥ 1 each)."""

from __future__ import annotations

import pytest

from tests.helm.chart import MINIMAL_VALUES, merged, render


def replicas(values: dict) -> tuple[int, int]:
    rendered = render(merged(MINIMAL_VALUES, values))
    return (
        rendered.deployment("prefill")["spec"]["replicas"],
        rendered.deployment("decode")["spec"]["replicas"],
    )


@pytest.mark.parametrize(
    ("num_prefill", "num_decode"), [(1, 1), (2, 1), (1, 3), (3, 5), (8, 2), (16, 48), (0, 4)]
)
def test_explicit_replicas_are_rendered_as_given(num_prefill: int, num_decode: int):
    values = {"prefill": {"replicas": num_prefill}, "decode": {"replicas": num_decode}}
    assert replicas(values) == (num_prefill, num_decode)


# (ratio, total) → (prefill, decode), as split_ratio gives them.
RATIO_SPLITS = [
    ("1:3", 4, (1, 3)),
    ("1:3", 6, (1, 5)),  # 1.5 → 1: a half goes to decode
    ("1:3", 8, (2, 6)),
    ("1:1", 2, (1, 1)),
    ("1:1", 5, (2, 3)),
    ("1:1", 7, (3, 4)),
    ("1:9", 4, (1, 3)),  # 0.4 → 0, clamped to 1
    ("9:1", 4, (3, 1)),  # 3.6 → 4, clamped to total − 1
    ("2:1", 3, (2, 1)),
    ("3:1", 8, (6, 2)),
    ("2:3", 10, (4, 6)),
    ("5:3", 16, (10, 6)),
    ("1:7", 100, (12, 88)),
]


@pytest.mark.parametrize(("ratio", "total", "expected"), RATIO_SPLITS)
def test_ratio_splits_the_total_like_split_ratio(ratio: str, total: int, expected: tuple[int, int]):
    assert replicas({"pools": {"ratio": ratio, "total": total}}) == expected


def test_ratio_overrides_the_pools_replicas():
    values = {"pools": {"ratio": "1:3", "total": 8}, "prefill": {"replicas": 5}}
    assert replicas(values) == (2, 6)


def test_notes_report_the_split():
    rendered = render(merged(MINIMAL_VALUES, {"pools": {"ratio": "1:3", "total": 8}}))
    assert (
        "Pools: 2 prefill + 6 decode worker(s) (pools.ratio 1:3 of pools.total 8" in rendered.notes
    )


def test_an_applying_controller_still_gets_the_values_sizes_on_install():
    """With controller.apply an upgrade keeps the live sizes (a `lookup` of the Deployment,
    which needs a cluster); an install, like this render, finds none and uses the values."""
    values = {"pools": {"ratio": "1:3", "total": 8}, "controller": {"enabled": True, "apply": True}}
    assert replicas(values) == (2, 6)
