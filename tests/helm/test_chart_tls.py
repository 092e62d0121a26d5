"""`tls.public` / `tls.internal` from Secrets: the Secret projected under /etc/pdserve/tls/<edge>,
the config files' `tls:` / `internal_tls:` sections at those paths, health served in plaintext
on ports.health (the probes ask there), the preStop drain's client TLS flags; off, none of it."""

from __future__ import annotations

import helm_python as helm
import pytest
import yaml

from tests.helm.chart import MINIMAL_VALUES, POOLS, Obj, Rendered, container, merged, render

INTERNAL = {
    "cert_file": "/etc/pdserve/tls/internal/tls.crt",
    "key_file": "/etc/pdserve/tls/internal/tls.key",
    "ca_file": "/etc/pdserve/tls/internal/ca.crt",
    "require_client_cert": True,
    "server_name": "pdserve-internal",  # what every peer checks the certificate as
}
TLS_VALUES = {
    "tls": {
        "public": {"secretName": "api-tls", "requireClientCert": True},
        "internal": {"secretName": "internal-tls"},
    }
}


@pytest.fixture(scope="module")
def with_tls() -> Rendered:
    return render(merged(MINIMAL_VALUES, TLS_VALUES))


def config_of(rendered: Rendered, component: str) -> dict:
    (config_map,) = rendered.component("ConfigMap", component)
    (text,) = config_map["data"].values()
    return yaml.safe_load(text)


def secret_sources(deployment: Obj) -> dict[str, list]:
    volumes = deployment["spec"]["template"]["spec"]["volumes"]
    (config,) = [v for v in volumes if v["name"] == "config"]
    sources = [s["secret"] for s in config["projected"]["sources"] if "secret" in s]
    return {s["name"]: [(i["key"], i["path"]) for i in s["items"]] for s in sources}


def files(edge: str, *keys: str) -> list[tuple[str, str]]:
    return [(key, f"tls/{edge}/{key}") for key in keys]


def test_secrets_are_projected_read_only_under_etc_pdserve_tls(with_tls: Rendered):
    assert secret_sources(with_tls.deployment("router")) == {
        "api-tls": files("public", "tls.crt", "tls.key", "ca.crt"),
        "internal-tls": files("internal", "tls.crt", "tls.key", "ca.crt"),
    }
    for pool in POOLS:
        deployment = with_tls.deployment(pool)
        assert secret_sources(deployment) == {
            "internal-tls": files("internal", "tls.crt", "tls.key", "ca.crt")
        }
        (mount,) = [m for m in container(deployment)["volumeMounts"] if m["name"] == "config"]
        assert (mount["mountPath"], mount["readOnly"]) == ("/etc/pdserve", True)


def test_public_tls_without_client_certs_mounts_no_ca():
    rendered = render(merged(MINIMAL_VALUES, {"tls": {"public": {"secretName": "api-tls"}}}))
    assert secret_sources(rendered.deployment("router")) == {
        "api-tls": files("public", "tls.crt", "tls.key")
    }
    assert config_of(rendered, "router")["tls"] == {
        "cert_file": "/etc/pdserve/tls/public/tls.crt",
        "key_file": "/etc/pdserve/tls/public/tls.key",
    }
    assert "internal_tls" not in config_of(rendered, "router")
    assert "health_port" not in config_of(rendered, "decode")


def test_configs_name_the_mounted_files_and_the_health_port(with_tls: Rendered):
    router = config_of(with_tls, "router")
    assert router["tls"] == {
        "cert_file": "/etc/pdserve/tls/public/tls.crt",
        "key_file": "/etc/pdserve/tls/public/tls.key",
        "ca_file": "/etc/pdserve/tls/public/ca.crt",
        "require_client_cert": True,
    }
    assert (router["internal_tls"], router["health_port"]) == (INTERNAL, 8081)
    for pool in POOLS:
        worker = config_of(with_tls, pool)
        assert (worker["internal_tls"], worker["health_port"]) == (INTERNAL, 8081)


def test_probes_ask_the_plaintext_health_port_for_the_same_services(with_tls: Rendered):
    default = render(MINIMAL_VALUES)
    for component in ("router", *POOLS):
        tls_container = container(with_tls.deployment(component))
        plain_container = container(default.deployment(component))
        assert {"name": "health", "containerPort": 8081, "protocol": "TCP"} in tls_container[
            "ports"
        ]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert tls_container[probe]["grpc"] == {
                "port": 8081,
                "service": plain_container[probe]["grpc"]["service"],
            }


def test_drain_presents_the_internal_certificate(with_tls: Rendered):
    for pool in POOLS:
        command = container(with_tls.deployment(pool))["lifecycle"]["preStop"]["exec"]["command"]
        flags = dict(zip(command[6::2], command[7::2], strict=True))
        assert flags == {
            "--tls-ca": INTERNAL["ca_file"],
            "--tls-cert": INTERNAL["cert_file"],
            "--tls-key": INTERNAL["key_file"],
            "--tls-server-name": INTERNAL["server_name"],
        }


def test_without_tls_nothing_changes():
    rendered = render(MINIMAL_VALUES)
    for component in ("router", *POOLS):
        deployment = rendered.deployment(component)
        assert secret_sources(deployment) == {}
        assert "health" not in {p["name"] for p in container(deployment)["ports"]}
        config = config_of(rendered, component)
        assert not {"tls", "internal_tls", "health_port"} & set(config)


def test_schema_refuses_unknown_tls_keys():
    with pytest.raises(helm.HelmError, match="secretNam"):
        render(merged(MINIMAL_VALUES, {"tls": {"internal": {"secretNam": "x"}}}))
