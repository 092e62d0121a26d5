"""`pdserve controller`: its flags, read once into ControllerConfig, and the run.

    pdserve controller --metrics-url http://router:9090/metrics --ttft-slo 0.5 --tpot-slo 0.05
    pdserve controller --metrics-url http://router-0:9090/metrics \\
        --metrics-url http://router-1:9090/metrics --max-total-workers 8 --apply
    pdserve controller --metrics-service pdserve-router-metrics:9090 --apply  # every replica

Dry-run unless --apply: each decision is logged and exported, no Deployment is patched.
"""

from __future__ import annotations

import argparse
import logging
import re
import signal
import sys
import threading
from typing import Any, get_args

from pydantic import ValidationError

from pdserve.controller.config import ControllerConfig

# ControllerConfig field → its flag, for the flags themselves and for naming one in an error.
_FLAGS = {
    "metrics_urls": "--metrics-url",
    "metrics_service": "--metrics-service",
    "period_s": "--period",
    "scrape_timeout_s": "--scrape-timeout",
    "ttft_slo_s": "--ttft-slo",
    "tpot_slo_s": "--tpot-slo",
    "slo_attainment_target": "--slo-attainment",
    "target_utilization": "--target-utilization",
    "prefill_tokens_per_s_per_worker": "--prefill-tokens-per-s-per-worker",
    "decode_tokens_per_s_per_worker": "--decode-tokens-per-s-per-worker",
    "capacity_alpha": "--capacity-alpha",
    "min_prefill": "--min-prefill",
    "max_prefill": "--max-prefill",
    "min_decode": "--min-decode",
    "max_decode": "--max-decode",
    "max_total_workers": "--max-total-workers",
    "cooldown_s": "--cooldown",
    "scale_down_stable_s": "--scale-down-stable",
    "warmup_samples": "--warmup-samples",
    "apply": "--apply",
    "namespace": "--namespace",
    "prefill_deployment": "--prefill-deployment",
    "decode_deployment": "--decode-deployment",
    "metrics_host": "--metrics-host",
    "metrics_port": "--metrics-port",
}


_METAVARS = {"metrics_service": "HOST:PORT"}


def add_controller(parser: argparse.ArgumentParser) -> None:
    """The flags of `pdserve controller`; each defaults to unset, so PDSERVE_CONTROLLER_* and
    then ControllerConfig's defaults apply (`pdserve controller --help` shows them)."""
    parser.add_argument(
        "--metrics-url",
        dest="metrics_urls",
        action="append",
        metavar="URL",
        help="a router's /metrics, e.g. http://router:9090/metrics; repeat per replica "
        "(summed); or instead --metrics-service",
    )
    parser.add_argument(
        "--apply", action="store_true", default=None, help="patch the Deployments' scale"
    )
    fields = ControllerConfig.model_fields
    for field, flag in _FLAGS.items():
        if field in ("metrics_urls", "apply"):
            continue
        info = fields[field]
        default = "" if info.default is None else f" (default {info.default})"
        parser.add_argument(
            flag,
            dest=field,
            type=_flag_type(info.annotation),
            metavar=_METAVARS.get(field, "SECONDS" if field.endswith("_s") else None),
            help=f"{info.description}{default}".replace("%", "%%"),
        )
    parser.set_defaults(run=run_controller)


def _flag_type(annotation: Any) -> Any:
    """The type a flag's text converts to: a field's own, `int | None` → int."""
    types = [each for each in get_args(annotation) if each is not type(None)]
    return types[0] if types else annotation


def controller_config(args: argparse.Namespace) -> ControllerConfig:
    """The ControllerConfig of the flags given, over PDSERVE_CONTROLLER_* and the defaults.
    Raises ValueError naming the flag at fault."""
    given = {field: getattr(args, field) for field in _FLAGS if getattr(args, field) is not None}
    try:
        return ControllerConfig(**given)
    except ValidationError as exc:
        raise ValueError("; ".join(_flag_message(error) for error in exc.errors())) from None


def _flag_message(error: Any) -> str:
    """One pydantic error as `--flag: message`, fields named as flags; a cross-check's
    message starts with the field it blames (`max_prefill: must be ≥ min_prefill …`)."""
    message = str(error["msg"]).removeprefix("Value error, ")
    field = str(error["loc"][0]) if error["loc"] else message.split(":", 1)[0]
    if not error["loc"] and field in _FLAGS:
        message = message.split(":", 1)[1].strip()
    named = re.sub(r"\b[a-z]+(?:_[a-z]+)+\b", lambda m: _FLAGS.get(m[0], m[0]), message)
    return f"{_FLAGS.get(field, field)}: {named}"


def run_controller(args: argparse.Namespace) -> int:
    """Runs the controller until SIGINT or SIGTERM; 2 for a bad flag, 1 when Kubernetes
    cannot be reached."""
    try:
        config = controller_config(args)
    except ValueError as exc:
        print(f"pdserve controller: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # Here, not at the top: the kubernetes client takes ~0.5 s to import, which every other
    # pdserve command (they share one parser) would pay.
    from kubernetes.config import ConfigException

    from pdserve.controller.kube import DeploymentPools, connect_apps_api
    from pdserve.controller.loop import Controller, run_loop
    from pdserve.controller.metrics import ControllerMetrics

    try:
        api = connect_apps_api()
    except ConfigException as exc:
        print(f"pdserve controller: no Kubernetes configuration: {exc}", file=sys.stderr)
        return 1
    metrics = ControllerMetrics()
    if config.metrics_port is not None:
        port = metrics.serve_http(config.metrics_host, config.metrics_port)
        logging.getLogger(__name__).info("controller metrics on port %d", port)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    pools = DeploymentPools(api, config.namespace, config.deployments)
    try:
        run_loop(Controller(config, pools, metrics), config.period_s, stop)
    finally:
        metrics.close()
    return 0
