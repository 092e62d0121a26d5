"""TLS and token settings: each mistake named by its field, flags merged key by key, and a
token compared exactly. (Real handshakes: tests/integration/test_tls.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from pdserve.auth import bearer, is_authorized
from pdserve.auth_flags import client_security
from pdserve.cli import _parser, up_config
from pdserve.config import ClusterConfig
from pdserve.tls import TLSConfig


@pytest.fixture
def pem(tmp_path: Path) -> Path:
    """A stand-in PEM file: the config checks presence, gRPC reads the content."""
    path = tmp_path / "x.pem"
    path.write_text("-----BEGIN CERTIFICATE-----\n")
    return path


@pytest.mark.parametrize(
    "fields, named",
    [
        ({"cert_file": "missing.pem", "key_file": "missing.pem"}, "cert_file"),
        ({"cert_file": "PEM"}, "key_file"),
        ({"cert_file": "PEM", "key_file": "PEM", "require_client_cert": True}, "ca_file"),
    ],
    ids=["unreadable", "cert-without-key", "mtls-without-ca"],
)
def test_tls_mistakes_name_the_field(pem: Path, fields: dict, named: str):
    values = {k: pem if v == "PEM" else v for k, v in fields.items()}
    with pytest.raises(ValidationError, match=named):
        TLSConfig(**values)


def test_a_server_tls_section_without_a_certificate_is_refused(pem: Path):
    with pytest.raises(ValidationError, match="internal_tls.cert_file"):
        ClusterConfig(internal_tls=TLSConfig(ca_file=pem))


def test_up_flags_override_the_files_tls_key_by_key(tmp_path: Path, pem: Path):
    """flags > YAML per setting: --tls-cert replaces the file's cert, its ca_file stays."""
    other = tmp_path / "other.pem"
    other.write_text(pem.read_text())
    config_file = tmp_path / "cluster.yaml"
    config_file.write_text(f"tls:\n  cert_file: {pem}\n  key_file: {pem}\n  ca_file: {pem}\n")
    args = _parser().parse_args(["up", "--config", str(config_file), "--tls-cert", str(other)])
    tls = up_config(args).tls
    assert (tls.cert_file, tls.key_file, tls.ca_file) == (other, pem, pem)


def test_token_file_is_read_and_never_shown(tmp_path: Path):
    token_file = tmp_path / "token"
    token_file.write_text("s3cret\n")
    config = ClusterConfig(auth_token_file=token_file)
    assert config.auth_token.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(config)


def test_token_and_token_file_together_are_refused(tmp_path: Path):
    token_file = tmp_path / "token"
    token_file.write_text("a")
    with pytest.raises(ValidationError, match="auth_token: give auth_token or auth_token_file"):
        ClusterConfig(auth_token="b", auth_token_file=token_file)


def test_client_takes_tls_from_flags_and_token_from_the_environment(pem: Path):
    args = _parser().parse_args(["status", "--tls-ca", str(pem)])
    security = client_security(args, {"PDSERVE_AUTH_TOKEN": "t0k"})
    assert security.tls == TLSConfig(ca_file=pem)
    assert security.token.get_secret_value() == "t0k"


def test_client_checks_the_server_as_the_name_given(pem: Path):
    argv = ["status", "--tls-ca", str(pem), "--tls-server-name", "pdserve-internal"]
    security = client_security(_parser().parse_args(argv), {})
    assert security.tls == TLSConfig(ca_file=pem, server_name="pdserve-internal")


def test_plain_client_flags_mean_plaintext_and_no_token():
    security = client_security(_parser().parse_args(["status"]), {})
    assert security.tls is None and security.token is None


def test_only_the_exact_token_is_authorized():
    token = SecretStr("abc")
    assert is_authorized([bearer(token)], token)
    assert not is_authorized([("authorization", "Bearer abd")], token)
    assert not is_authorized([("authorization", "abc")], token)
    assert not is_authorized([], token)
