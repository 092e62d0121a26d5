"""`python -m bench [--only B1[,B4]] [--quick]`: runs the benchmarks (bench/b<N>_*.py), writes
bench/results/<id>.json for each, and prints each one's headline line.

A benchmark module exposes ID ("B1"), NAME and `run(quick: bool) -> BenchResult`. A run()
that raises BenchUnavailable (B6 without CUDA) is skipped, with its reason, when every
benchmark runs, and fails the command when it was named in --only.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import re
import sys
from types import ModuleType

import bench
from bench.common import BenchUnavailable

_MODULE_RE = re.compile(r"^b(\d+)_\w+$")


def discover() -> dict[str, str]:
    """Every benchmark's id ("B1") and module name ("bench.b1_kv_handoff"), in id order."""
    found = []
    for info in pkgutil.iter_modules(bench.__path__):
        match = _MODULE_RE.match(info.name)
        if match:
            found.append((int(match.group(1)), info.name))
    return {f"B{number}": f"bench.{name}" for number, name in sorted(found)}


def select(available: dict[str, str], only: str | None) -> list[ModuleType]:
    """The modules named in `only` (comma-separated ids, any case), all when None. Only the
    selected ones are imported, so one benchmark's heavy imports never slow another's run."""
    wanted = list(available) if only is None else [i.strip().upper() for i in only.split(",")]
    unknown = [benchmark_id for benchmark_id in wanted if benchmark_id not in available]
    if unknown:
        raise SystemExit(f"unknown benchmark id(s): {', '.join(unknown)}")
    modules = [importlib.import_module(available[benchmark_id]) for benchmark_id in wanted]
    for benchmark_id, module in zip(wanted, modules, strict=True):
        if module.ID != benchmark_id:
            raise SystemExit(
                f"{module.__name__} declares ID {module.ID!r}, its file says {benchmark_id}"
            )
    return modules


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--only", help="comma-separated benchmark ids, e.g. B1")
    parser.add_argument("--quick", action="store_true", help="small sizes, few repeats")
    args = parser.parse_args(argv)
    for module in select(discover(), args.only):
        try:
            result = module.run(args.quick)
        except BenchUnavailable as reason:
            if args.only is not None:  # asked for by name: a failure, not a skip
                raise SystemExit(f"{module.ID} {reason}") from None
            print(f"{module.ID} skipped: {reason}", flush=True)
            continue
        path = result.write()
        print(f"wrote {path}", flush=True)
        print(result.headline(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
