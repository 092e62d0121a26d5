"""TLS for every pdserve gRPC edge: one typed setting per edge, and the credentials it makes.

Two edges, two settings (ARCHITECTURE §10, RELIABILITY "Security"):
    public    client ↔ router                      RouterConfig.tls
    internal  router ↔ worker, decode ↔ prefill     internal_tls of the router and every worker:
              (Prefill, Decode, WatchPageEvents,    the workers' servers and the router's and
              leases, SendKV)                       peers' channels use the same files
A server needs cert_file + key_file; with require_client_cert (mTLS) it also needs ca_file and
refuses any client whose certificate that CA did not sign. A channel verifies the server
against ca_file (the system roots when unset) and presents cert_file + key_file when given, so
one internal certificate (no extended key usage, or serverAuth + clientAuth) serves both sides.
Peers are verified by the host of the address dialled — certificates need SANs for the IPs or
names workers and routers bind (e.g. IP:127.0.0.1 on a local cluster) — or, with
`server_name`, by that one name (Kubernetes: pod IPs change). Unset = plaintext.
The tcp KV backend's streams (decode ← prefill) run TLS from the same internal files
(`ssl_server_context`, `ssl_client_context`).

Torch-free and Ray-free: the router imports it.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path
from typing import Protocol

import grpc
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class TLSConfig(BaseModel):
    """PEM files of one edge; checked (present, readable, consistent) at construction."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    cert_file: Path | None = Field(
        None,
        description="This side's certificate chain (PEM): a server's, or a client's for mTLS.",
    )
    key_file: Path | None = Field(None, description="The private key of cert_file (PEM).")
    ca_file: Path | None = Field(
        None,
        description="CA bundle (PEM) peers are verified against: a channel's server, a "
        "server's clients (mTLS). A channel without it uses the system roots.",
    )
    require_client_cert: bool = Field(
        False, description="mTLS: a server refuses clients without a certificate from ca_file."
    )
    server_name: str | None = Field(
        None,
        description="A channel verifies the server's certificate against this name instead of "
        "the host it dials: one internal certificate (with this DNS SAN) then serves every "
        "pod, whatever its IP. Unset = the host dialled.",
    )

    @field_validator("cert_file", "key_file", "ca_file")
    @classmethod
    def _readable(cls, path: Path | None) -> Path | None:
        if path is not None and not (path.is_file() and os.access(path, os.R_OK)):
            raise ValueError(f"{path}: not a readable file")
        return path

    @model_validator(mode="after")
    def _consistent(self) -> TLSConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("key_file: give cert_file and key_file together")
        if self.require_client_cert and self.ca_file is None:
            raise ValueError("ca_file: require_client_cert needs the CA that signs clients")
        return self

    @property
    def can_serve(self) -> bool:
        """Whether a server can use it: it has a certificate and its key."""
        return self.cert_file is not None


class _Server(Protocol):
    """grpc.Server and grpc.aio.Server alike."""

    def add_secure_port(self, address: str, server_credentials: grpc.ServerCredentials) -> int: ...

    def add_insecure_port(self, address: str) -> int: ...


def server_credentials(tls: TLSConfig | None) -> grpc.ServerCredentials | None:
    """The server side of `tls`; None for plaintext. Raises ValueError when it cannot serve."""
    if tls is None:
        return None
    if not tls.can_serve:
        raise ValueError("cert_file: a TLS server needs a certificate and its key")
    assert tls.cert_file is not None and tls.key_file is not None
    return grpc.ssl_server_credentials(
        [(tls.key_file.read_bytes(), tls.cert_file.read_bytes())],
        root_certificates=_read(tls.ca_file),
        require_client_auth=tls.require_client_cert,
    )


def channel_credentials(tls: TLSConfig | None) -> grpc.ChannelCredentials | None:
    """The client side of `tls`; None for plaintext."""
    if tls is None:
        return None
    return grpc.ssl_channel_credentials(
        root_certificates=_read(tls.ca_file),
        private_key=_read(tls.key_file),
        certificate_chain=_read(tls.cert_file),
    )


def ssl_server_context(tls: TLSConfig | None) -> ssl.SSLContext | None:
    """`server_credentials` for a raw TLS stream (the tcp KV backend); None for plaintext."""
    if tls is None:
        return None
    if not tls.can_serve:
        raise ValueError("cert_file: a TLS server needs a certificate and its key")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tls.cert_file, tls.key_file)
    if tls.require_client_cert:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(tls.ca_file)
    return context


def ssl_client_context(tls: TLSConfig | None) -> ssl.SSLContext | None:
    """`channel_credentials` for a raw TLS stream: verifies the server against ca_file or the
    system roots, presents cert_file when given; None for plaintext. The name checked is the
    caller's (`tls.server_name`, else the host dialled)."""
    if tls is None:
        return None
    context = ssl.create_default_context(cafile=tls.ca_file)
    if tls.cert_file is not None:
        context.load_cert_chain(tls.cert_file, tls.key_file)
    return context


def bind(server: _Server, address: str, tls: TLSConfig | None) -> int:
    """Adds a TLS (or, without `tls`, plaintext) port; returns the bound port, OSError if none."""
    credentials = server_credentials(tls)
    if credentials is None:
        port = server.add_insecure_port(address)
    else:
        port = server.add_secure_port(address, credentials)
    if port == 0:
        raise OSError(f"port: cannot bind {address}")
    return port


def _read(path: Path | None) -> bytes | None:
    return path.read_bytes() if path is not None else None
