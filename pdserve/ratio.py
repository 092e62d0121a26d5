"""Pool sizes from a prefill:decode ratio, shared by `pdserve up`, the Helm chart's rule and the
ratio controller. Torch-free and Ray-free: the controller imports it in a pod without either.
"""

from __future__ import annotations

import re

_RATIO = re.compile(r"\s*(\d+)\s*:\s*(\d+)\s*")


def parse_ratio(ratio: str) -> tuple[int, int]:
    """ "P:D" → (P, D), both whole numbers ≥ 1; ValueError naming `ratio` otherwise."""
    match = _RATIO.fullmatch(str(ratio))
    if match is None:
        raise ValueError(
            f"ratio: expected prefill:decode in whole numbers, e.g. 1:3; got {ratio!r}"
        )
    prefill, decode = int(match[1]), int(match[2])
    if prefill < 1 or decode < 1:
        raise ValueError(f"ratio: both sides must be ≥ 1 (e.g. 1:3); got {ratio!r}")
    return prefill, decode


def split_ratio(ratio: tuple[int, int], num_workers: int) -> tuple[int, int]:
    """(num_prefill, num_decode) summing to num_workers, closest to the ratio with ≥ 1 each.

    Prefill gets num_workers·P/(P+D) rounded to the nearest whole number, a half rounded
    down (decode gets the extra worker), then clamped to 1 … num_workers − 1; decode gets
    the rest. E.g. 1:3 of 4 → 1+3, 1:3 of 6 → 1+5 (1.5 → 1), 1:1 of 5 → 2+3, 1:9 of 4 → 1+3.
    """
    if num_workers < 2:
        raise ValueError(f"num_workers: a ratio needs ≥ 2 workers (1 of each); got {num_workers}")
    prefill, decode = ratio
    # ceil(x − ½) for x = n·P/(P+D), in integers: a half goes down.
    num_prefill = (2 * num_workers * prefill + prefill + decode - 1) // (2 * (prefill + decode))
    num_prefill = min(max(num_prefill, 1), num_workers - 1)
    return num_prefill, num_workers - num_prefill
