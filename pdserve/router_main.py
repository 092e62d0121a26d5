"""`pdserve router`: one router replica, as a Kubernetes router pod runs it.

It starts with no workers and finds them through the shared registry in Redis (`redis_url`,
env PDSERVE_REDIS_URL, required): each monitor round's `registry.sync()` adopts the records
that `pdserve worker` processes (pdserve/registration.py) and other replicas wrote, then the
router polls those workers' stats, follows their page events and routes to them; a worker
that retires its record, or whose record expires, is dropped (router/redis_registry.py). It
never talks to the Kubernetes API. It serves until SIGTERM (or SIGINT), then turns
NOT_SERVING, lets streams finish for `shutdown_grace_s` and exits 0.

Settings: RouterConfig's fields, from flags > env PDSERVE_* (the prefix every pdserve command
reads; sections as PDSERVE_TLS__CERT_FILE) > `--config` YAML > defaults, plus the model whose
tokenizer and config the router reads (resolved as the workers resolve it).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from pdserve import auth_flags, layered_config
from pdserve.token_files import TokenFiles
from router.config import RouterConfig

log = logging.getLogger(__name__)

# engine.builder's DEFAULT_MODEL_CACHE, not imported from there: that module loads torch.
_MODEL_CACHE = Path.home() / ".cache" / "pdserve" / "models"
REDIS_URL_ENV = "PDSERVE_REDIS_URL"


class RouterServiceConfig(TokenFiles, RouterConfig):
    """The router pod's settings: every RouterConfig field, read from PDSERVE_*, and the model.

    `model_dir` may be left unset: `router_config()` resolves `model` into it."""

    model_config = SettingsConfigDict(
        env_prefix="PDSERVE_", env_nested_delimiter="__", frozen=True, extra="forbid"
    )

    model: str = Field(
        "smollm2-135m",
        description="The workers' model (alias, HF directory or .gguf file): the router reads "
        "its tokenizer and config. Ignored when model_dir is set.",
    )
    model_cache_dir: Path = Field(_MODEL_CACHE, description="Where converted models are kept.")
    model_dir: Path | None = Field(
        None, description="Converted HF-format model directory; unset = `model` resolved."
    )
    redis_url: str = Field(
        "",
        description="Redis holding the shared worker registry and prefix index "
        "(redis://[:password@]host:port/db, rediss:// for TLS). Required: this router "
        f"discovers workers only there. Env {REDIS_URL_ENV}.",
    )

    @model_validator(mode="after")
    def _has_a_registry(self) -> RouterServiceConfig:
        if not self.redis_url:
            raise ValueError(
                f"redis_url: set {REDIS_URL_ENV} — a router alone, with no shared registry, "
                "cannot discover workers"
            )
        return self

    def router_config(self, model_dir: Path) -> RouterConfig:
        """The RouterConfig the server runs with: these settings, `model_dir` resolved."""
        values = {name: getattr(self, name) for name in RouterConfig.model_fields}
        values["model_dir"] = model_dir
        if not self.model_name and self.model_dir is None:
            values["model_name"] = self.model  # what `pdserve up` serves it as, e.g. "tiny"
        return RouterConfig(**values)  # every field given: no PDSERVE_ROUTER_* read


def add_router(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="YAML file of router settings")
    parser.add_argument("--host", help="interface to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="public gRPC port (default 50051)")
    parser.add_argument(
        "--metrics-port", dest="metrics_port", type=int, help="Prometheus /metrics port"
    )
    parser.add_argument(
        "--health-port",
        dest="health_port",
        type=int,
        help="plaintext port serving only grpc.health.v1 (probes, when the public API is TLS)",
    )
    parser.add_argument("--model", help="the workers' model: alias, HF directory or .gguf file")
    auth_flags.add_server_flags(parser)
    parser.set_defaults(run=run_router)


def router_settings(args: argparse.Namespace) -> RouterServiceConfig:
    """flags > PDSERVE_* > --config YAML > defaults; ValueError naming the setting at fault."""
    flags = {key: value for key, value in vars(args).items() if key not in ("run", "config")}
    return layered_config.load(RouterServiceConfig, args.config, auth_flags.sectioned(flags))


def run_router(args: argparse.Namespace) -> int:
    try:
        settings = router_settings(args)
    except ValueError as exc:
        print(f"pdserve router: {layered_config.describe(exc)}", file=sys.stderr)
        return 2
    from engine.weights import resolve_model

    try:
        model_dir = settings.model_dir or resolve_model(settings.model, settings.model_cache_dir)
    except ValueError as exc:
        print(f"pdserve router: model: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return asyncio.run(serve_until_signalled(settings.router_config(model_dir)))


async def serve_until_signalled(config: RouterConfig) -> int:
    """Serves with no workers registered until SIGTERM/SIGINT; then stops with the grace."""
    from router.server import RouterServer

    server = RouterServer(config)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    await server.start()
    print(f"pdserve router ready on {config.host}:{server.port}", flush=True)
    await stopping.wait()
    log.info("stopping: streams get %.1f s to finish", config.shutdown_grace_s)
    await server.stop(config.shutdown_grace_s)
    return 0
