"""A real `redis-server` on a free loopback port, for tests (RELIABILITY.md "test doubles").

Lifecycle: `start()` (or `with RedisServer() as server:`) launches the process in its own
temporary directory, without persistence, and returns once it answers PING. Faults are real:
`kill()` (SIGKILL), `pause()` / `resume()` (SIGSTOP / SIGCONT). `restart()` starts a fresh
process on the same port, so clients reconnect to the same URL and find it empty (no data,
no cached scripts). `stop()` ends it (SIGTERM) and removes its directory. With `tls=True` it
listens only for TLS (a self-signed certificate for 127.0.0.1 made with `openssl`), and `url`
is a rediss:// URL that trusts that certificate.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

HOST = "127.0.0.1"
NO_RETRY = Retry(NoBackoff(), 0)  # a probe that fails says so at once


class RedisServer:
    def __init__(
        self, password: str | None = None, tls: bool = False, startup_timeout_s: float = 5.0
    ) -> None:
        executable = shutil.which("redis-server")
        if executable is None:
            raise RuntimeError(
                "redis-server is not on PATH; `make test` installs it "
                "(apt-get install redis-server), or install it yourself"
            )
        self.password = password
        self.port = _free_port()
        self._tls_dir = _self_signed_certificate() if tls else None
        self._executable = executable
        self._startup_timeout_s = startup_timeout_s
        self._dir: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._paused = False

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        if self._tls_dir is None:
            return f"redis://{auth}{HOST}:{self.port}/0"
        ca = self._tls_dir / "cert.pem"
        return f"rediss://{auth}{HOST}:{self.port}/0?ssl_cert_reqs=required&ssl_ca_certs={ca}"

    @property
    def is_running(self) -> bool:
        """Started, not killed or stopped (it may be paused)."""
        return self._process is not None and self._process.poll() is None

    @property
    def is_paused(self) -> bool:
        return self.is_running and self._paused

    def start(self) -> None:
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="pdserve-redis-"))
        args = [self._executable, "--bind", HOST, *self._listen_args()]
        args += ["--save", "", "--appendonly", "no", "--dir", str(self._dir)]
        if self.password:
            args += ["--requirepass", self.password]
        with open(self._dir / "redis.log", "ab") as log:  # the child keeps its own copy
            self._process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        self._paused = False
        self._wait_until_ready()

    def kill(self) -> None:
        self._signal_and_wait(signal.SIGKILL)

    def stop(self) -> None:
        """Ends the server (SIGTERM) and removes its directories. Idempotent."""
        self._signal_and_wait(signal.SIGTERM)
        for folder in (self._dir, self._tls_dir):
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)
        self._dir = self._tls_dir = None

    def pause(self) -> None:
        assert self._process is not None
        self._process.send_signal(signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        assert self._process is not None
        self._process.send_signal(signal.SIGCONT)
        self._paused = False

    def restart(self) -> None:
        """A new, empty process on the same port (the old one is killed if still up)."""
        self.kill()
        self.start()

    def flush(self) -> None:
        with self._client() as client:
            client.flushall()

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _signal_and_wait(self, signum: signal.Signals) -> None:
        if not self.is_running:
            return
        assert self._process is not None
        if self._paused:  # a stopped process would hold SIGTERM until it is continued
            self.resume()
        self._process.send_signal(signum)
        self._process.wait(timeout=10)

    def _wait_until_ready(self) -> None:
        deadline_s = time.monotonic() + self._startup_timeout_s
        while True:
            try:
                with self._client() as client:
                    client.ping()
                return
            except redis.ConnectionError:
                if not self.is_running or time.monotonic() > deadline_s:
                    self.kill()
                    raise RuntimeError(f"redis-server did not start:\n{self._log_tail()}") from None
                time.sleep(0.02)

    def _listen_args(self) -> list[str]:
        if self._tls_dir is None:
            return ["--port", str(self.port)]
        cert, key = self._tls_dir / "cert.pem", self._tls_dir / "key.pem"
        return [
            *("--port", "0", "--tls-port", str(self.port), "--tls-auth-clients", "no"),
            *("--tls-cert-file", str(cert), "--tls-key-file", str(key)),
            *("--tls-ca-cert-file", str(cert)),
        ]

    def _client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=1.0, retry=NO_RETRY)

    def _log_tail(self) -> str:
        assert self._dir is not None
        return (self._dir / "redis.log").read_text(errors="replace")[-2000:]


def _self_signed_certificate() -> Path:
    """A folder with cert.pem and key.pem: a one-day self-signed certificate for HOST."""
    folder = Path(tempfile.mkdtemp(prefix="pdserve-redis-tls-"))
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-keyout", str(folder / "key.pem"), "-out", str(folder / "cert.pem")),
            *("-subj", f"/CN={HOST}", "-addext", f"subjectAltName=IP:{HOST}"),
        ],
        check=True,
        capture_output=True,
    )
    return folder


def _free_port() -> int:
    """A port the kernel just handed out; free again once the probe socket closes."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]
