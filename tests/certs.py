"""Throwaway certificates for TLS tests, made with the `openssl` CLI (P-256 keys, one day).

`make_pki(folder)` writes a CA and, signed by it, one certificate for 127.0.0.1 and localhost
(IP and DNS SANs, no extended key usage: it serves as server and as client certificate, as
pdserve's internal one does), one client certificate, and a stranger's client certificate
signed by another CA (for mTLS refusals).
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from pdserve.tls import TLSConfig

_DAYS = ("-days", "1")
_EC_KEY = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")


@dataclass(frozen=True, slots=True)
class KeyPair:
    cert: Path
    key: Path


@dataclass(frozen=True, slots=True)
class Pki:
    ca: Path
    host: KeyPair  # 127.0.0.1 / localhost: servers, and clients of the internal edge
    client: KeyPair
    stranger: KeyPair  # a client certificate from another CA

    def server_tls(self, require_client_cert: bool = False) -> TLSConfig:
        ca = self.ca if require_client_cert else None
        return TLSConfig(
            cert_file=self.host.cert,
            key_file=self.host.key,
            ca_file=ca,
            require_client_cert=require_client_cert,
        )

    def client_tls(self, pair: KeyPair | None = None) -> TLSConfig:
        if pair is None:
            return TLSConfig(ca_file=self.ca)
        return TLSConfig(ca_file=self.ca, cert_file=pair.cert, key_file=pair.key)

    def internal_tls(self) -> TLSConfig:
        """Both sides of an mTLS internal edge: one certificate, verified against the CA."""
        return TLSConfig(
            cert_file=self.host.cert,
            key_file=self.host.key,
            ca_file=self.ca,
            require_client_cert=True,
        )


def make_pki(folder: Path) -> Pki:
    ca = _ca(folder, "ca")
    other_ca = _ca(folder, "other-ca")
    host = _signed(folder, "host", ca, "subjectAltName=IP:127.0.0.1,DNS:localhost")
    client = _signed(folder, "client", ca, "subjectAltName=DNS:pdserve-client")
    stranger = _signed(folder, "stranger", other_ca, "subjectAltName=DNS:pdserve-client")
    return Pki(ca.cert, host, client, stranger)


def _ca(folder: Path, name: str) -> KeyPair:
    pair = KeyPair(folder / f"{name}.pem", folder / f"{name}.key")
    _openssl(
        *("req", "-x509", *_EC_KEY, *_DAYS, "-subj", f"/CN=pdserve test {name}"),
        *("-keyout", pair.key, "-out", pair.cert),
        *("-addext", "basicConstraints=critical,CA:TRUE"),
        *("-addext", "keyUsage=critical,keyCertSign,cRLSign"),
    )
    return pair


def _signed(folder: Path, name: str, ca: KeyPair, san: str) -> KeyPair:
    pair, request = KeyPair(folder / f"{name}.pem", folder / f"{name}.key"), folder / f"{name}.csr"
    _openssl(
        *("req", *_EC_KEY, "-subj", f"/CN={name}", "-addext", san),
        *("-keyout", pair.key, "-out", request),
    )
    _openssl(
        *("x509", "-req", "-in", request, "-CA", ca.cert, "-CAkey", ca.key, *_DAYS),
        *("-set_serial", "0x" + name.encode().hex(), "-copy_extensions", "copy"),
        *("-out", pair.cert),
    )
    return pair


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)
