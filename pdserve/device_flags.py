"""The engine-device flags `pdserve up` and `pdserve worker` share (pdserve/config.py fields)."""

from __future__ import annotations

import argparse


def add_device_flags(parser: argparse.ArgumentParser) -> None:
    """--device, --attention, --[no-]cuda-graphs; unset flags stay None (the lower layers win)."""
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], help="workers' device")
    parser.add_argument("--attention", choices=["auto", "torch", "triton"])
    parser.add_argument(
        "--cuda-graphs",
        dest="cuda_graphs",
        action=argparse.BooleanOptionalAction,
        help="replay decode steps from CUDA graphs (on cuda; default on)",
    )
