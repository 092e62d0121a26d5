"""The TLS and token flags of the `pdserve` commands, and what they are read into.

`pdserve up` (the servers' side): --tls-cert/--tls-key/--tls-ca/--tls-require-client-cert for
the public API, the same with --internal-tls-* for router ↔ worker ↔ worker, and
--auth-token-file/--internal-auth-token-file; they become ClusterConfig's `tls`,
`internal_tls`, `*_token_file` (env PDSERVE_AUTH_TOKEN / PDSERVE_INTERNAL_AUTH_TOKEN give the
tokens themselves). Tokens are never flags: a command line is visible to every local user.

generate, status, scale (the client's side): --tls (system roots), --tls-ca, --tls-cert and
--tls-key (mTLS), and the token from --auth-token-file or else env PDSERVE_AUTH_TOKEN.
`pdserve router` takes the servers' flags, `pdserve worker` the internal edge's only, and
`pdserve drain` (a client of a worker) the client's flags with env PDSERVE_INTERNAL_AUTH_TOKEN.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from pdserve.auth import read_token_file
from pdserve.tls import TLSConfig

TOKEN_ENV = "PDSERVE_AUTH_TOKEN"
INTERNAL_TOKEN_ENV = "PDSERVE_INTERNAL_AUTH_TOKEN"
_TLS_FILES = (
    ("cert", "cert_file", "certificate chain"),
    ("key", "key_file", "private key of the certificate"),
    ("ca", "ca_file", "CA bundle that verifies peers"),
)
_SECTIONS = ("tls", "internal_tls")


def add_server_flags(parser: argparse.ArgumentParser, public: bool = True) -> None:
    """Both edges' flags; with `public` False (a worker serves no public API) only the
    internal edge's."""
    for section, edge in zip(_SECTIONS, ("public API", "internal edge"), strict=True):
        if section == "tls" and not public:
            continue
        flag = section.replace("_", "-")
        for short, field, what in _TLS_FILES:
            parser.add_argument(
                f"--{flag}-{short}",
                dest=f"{section}.{field}",
                type=Path,
                metavar="PEM",
                help=f"{edge} TLS: {what}",
            )
        parser.add_argument(
            f"--{flag}-require-client-cert",
            dest=f"{section}.require_client_cert",
            action="store_true",
            default=None,
            help=f"{edge} mTLS: refuse clients without a certificate from --{flag}-ca",
        )
    if public:
        parser.add_argument(
            "--auth-token-file", type=Path, help="bearer token every public call must carry"
        )
    parser.add_argument(
        "--internal-auth-token-file", type=Path, help="bearer token of every internal call"
    )


def sectioned(flags: Mapping[str, Any]) -> dict[str, Any]:
    """`up`'s flags with `tls.cert_file` & co. grouped into a `tls` (`internal_tls`) section;
    a section no flag of which was given is left out, so lower sources keep theirs."""
    grouped: dict[str, Any] = {}
    for key, value in flags.items():
        section, _, field = key.partition(".")
        if not field:
            grouped[key] = value
        elif value is not None:
            grouped.setdefault(section, {})[field] = value
    return grouped


@dataclass(frozen=True, slots=True)
class ClientSecurity:
    tls: TLSConfig | None = None
    token: SecretStr | None = None


def add_client_flags(parser: argparse.ArgumentParser, token_env: str = TOKEN_ENV) -> None:
    """`token_env`: the variable holding the token when no file is given (the internal
    edge's, PDSERVE_INTERNAL_AUTH_TOKEN, for `pdserve drain`)."""
    parser.add_argument("--tls", action="store_true", help="TLS, verified by the system roots")
    parser.add_argument("--tls-ca", type=Path, help="TLS, verified by this CA bundle")
    parser.add_argument("--tls-cert", type=Path, help="client certificate (mTLS)")
    parser.add_argument("--tls-key", type=Path, help="its private key")
    parser.add_argument(
        "--tls-server-name", help="verify the server's certificate as this name, not the host"
    )
    parser.add_argument(
        "--auth-token-file", type=Path, help=f"bearer token file (default: env {token_env})"
    )


def client_security(
    args: argparse.Namespace, environ: Mapping[str, str], token_env: str = TOKEN_ENV
) -> ClientSecurity:
    """Raises ValueError (pydantic's ValidationError) naming the flag's setting at fault."""
    files = {"ca_file": args.tls_ca, "cert_file": args.tls_cert, "key_file": args.tls_key}
    given = {field: path for field, path in files.items() if path is not None}
    if args.tls_server_name:
        given["server_name"] = args.tls_server_name
    tls = TLSConfig(**given) if given or args.tls else None
    if args.auth_token_file is not None:
        return ClientSecurity(tls, read_token_file(args.auth_token_file))
    token = environ.get(token_env)
    return ClientSecurity(tls, SecretStr(token) if token else None)
