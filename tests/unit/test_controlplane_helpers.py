"""The control plane's pure helpers and its error messages (no control plane started)."""

from __future__ import annotations

import base64
import ipaddress
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from devtools import pki
from devtools.controlplane import (
    ASSETS_ENV,
    ControlPlaneError,
    WriteRequest,
    diagnose_exit,
    fresh_namespace_name,
    kubeconfig_dict,
    kubernetes_service_problem,
    parse_audit_writes,
    resolve_assets,
    tail_lines,
    token_file_line,
)


def test_kubeconfig_embeds_the_ca_and_the_token():
    assert kubeconfig_dict("https://127.0.0.1:6443", b"PEM", "tok", "alice", "ns1") == {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "sft-local",
                "cluster": {
                    "server": "https://127.0.0.1:6443",
                    "certificate-authority-data": base64.b64encode(b"PEM").decode(),
                },
            }
        ],
        "users": [{"name": "alice", "user": {"token": "tok"}}],
        "contexts": [
            {"name": "alice@sft-local", "context": {"cluster": "sft-local", "user": "alice", "namespace": "ns1"}}
        ],
        "current-context": "alice@sft-local",
    }


def test_token_file_line_quotes_the_groups():
    assert token_file_line("t", "admin", "1", ("system:masters", "devs")) == 't,admin,1,"system:masters,devs"'
    assert token_file_line("t", "cm", "2", ()) == 't,cm,2,""'


@pytest.mark.parametrize(
    ("tail", "expected"),
    [
        (
            ["x", "listen tcp 127.0.0.1:2379: bind: address already in use"],
            "etcd could not bind its port (port in use); retry, or free the port",
        ),
        (["starting", "Error: unknown flag: --nope", ""], "etcd: Error: unknown flag: --nope"),
        ([], "etcd wrote no log"),
    ],
)
def test_diagnose_exit(tail, expected):
    assert diagnose_exit("etcd", tail) == expected


def test_tail_lines_keeps_the_last_lines(tmp_path):
    log = tmp_path / "x.log"
    log.write_text("".join(f"line {i}\n" for i in range(100)))
    assert tail_lines(log, 3) == ["line 97", "line 98", "line 99"]
    assert tail_lines(tmp_path / "missing.log") == []


@pytest.mark.parametrize(
    ("test_name", "stem"),
    [
        ("test_a[param-1]", "test-a-param-1"),
        ("test_" + "x" * 80, "test-" + "x" * 43),
        ("___", "test"),
    ],
)
def test_namespace_name_is_a_dns_label(test_name, stem):
    name = fresh_namespace_name(test_name)
    assert name.rsplit("-", 1)[0] == stem
    assert len(name) <= 63 and name == name.lower() and name[0].isalnum() and name[-1].isalnum()


def test_serving_cert_is_signed_by_the_ca_for_loopback_and_service_names():
    ca = pki.make_ca()
    serving = pki.make_serving_cert(ca, ip_addresses=("127.0.0.1",))
    cert = x509.load_pem_x509_certificate(serving.cert_pem)
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem)
    cert.verify_directly_issued_by(ca_cert)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert sans.get_values_for_type(x509.DNSName) == list(pki.API_SERVER_DNS_NAMES)
    assert cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value == x509.ExtendedKeyUsage(
        [ExtendedKeyUsageOID.SERVER_AUTH]
    )
    assert ca_cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True


def test_missing_binaries_in_kubebuilder_assets_name_the_binary(tmp_path):
    with pytest.raises(ControlPlaneError) as err:
        resolve_assets({ASSETS_ENV: str(tmp_path)})
    assert str(err.value) == (
        f"{ASSETS_ENV}={tmp_path}: no executable 'etcd' in {tmp_path}; "
        f"unset {ASSETS_ENV} to build the binaries with provision-k8s.sh"
    )
    for name in ("etcd", "kube-apiserver"):
        (tmp_path / name).write_text("#!/bin/sh\n")
        (tmp_path / name).chmod(0o755)
    with pytest.raises(ControlPlaneError, match="envtest's asset bundles have no kube-controller-manager"):
        resolve_assets({ASSETS_ENV: str(tmp_path)})


def test_a_failing_provisioning_script_gives_its_last_words(tmp_path: Path):
    script = tmp_path / "provision.sh"
    script.write_text("echo building... >&2\necho 'provision-k8s: no apt-get: install them yourself' >&2\nexit 1\n")
    with pytest.raises(ControlPlaneError) as err:
        resolve_assets({}, script=script)
    assert err.value.summary == (
        "provisioning failed (provision.sh exit 1): provision-k8s: no apt-get: install them yourself; "
        f"run {script} to see the whole log, or set {ASSETS_ENV}"
    )
    with pytest.raises(ControlPlaneError, match=r"is not set and .*nowhere\.sh does not exist"):
        resolve_assets({}, script=tmp_path / "nowhere.sh")


def test_the_provisioning_script_output_is_checked(tmp_path: Path):
    script = tmp_path / "provision.sh"
    script.write_text(f"echo {tmp_path}/empty\n")
    with pytest.raises(ControlPlaneError, match=r"^provision\.sh: no executable 'etcd' in .*/empty;"):
        resolve_assets({}, script=script)


def test_parse_audit_writes_keeps_completed_writes_only():
    lines = [
        '{"kind":"Event","level":"Metadata","stage":"ResponseComplete","verb":"patch",'
        '"user":{"username":"system:serviceaccount:ns:op"},"userAgent":"kopf/1",'
        '"objectRef":{"resource":"sftjobs","namespace":"ns","name":"a","apiGroup":"finetune.dev","subresource":"status"},'
        '"responseStatus":{"code":200}}',
        '{"kind":"Event","stage":"ResponseComplete","verb":"get","objectRef":{"resource":"pods"}}',
        '{"kind":"Event","stage":"Panic","verb":"create","objectRef":{"resource":"pods"}}',
        "",
        '{"kind":"Event","stage":"ResponseComplete","verb":"create","user":{"username":"admin"},'
        '"objectRef":{"resource":"namespaces","name":"ns"},"responseStatus":{"code":409}}',
    ]
    assert parse_audit_writes(lines) == [
        WriteRequest(
            verb="patch",
            resource="sftjobs",
            subresource="status",
            namespace="ns",
            name="a",
            user="system:serviceaccount:ns:op",
            user_agent="kopf/1",
            code=200,
        ),
        WriteRequest(
            verb="create",
            resource="namespaces",
            subresource="",
            namespace="",
            name="ns",
            user="admin",
            user_agent="",
            code=409,
        ),
    ]


def _endpoints(ip: str, port: int) -> dict:
    return {"subsets": [{"addresses": [{"ip": ip}], "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}]}


def _slice(ip: str, port: int) -> dict:
    return {
        "addressType": "IPv4",
        "endpoints": [{"addresses": [ip]}],
        "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
    }


def test_kubernetes_service_endpoints_must_be_this_apiserver():
    """After `make realnode-up` twice the Endpoints kept the first start's port (kube-apiserver
    1.20 reconciles the address, not the port): pods connected to a dead port."""
    assert (
        kubernetes_service_problem(_endpoints("192.0.2.2", 6443), _slice("192.0.2.2", 6443), "192.0.2.2", 6443) is None
    )
    assert kubernetes_service_problem(
        _endpoints("192.0.2.2", 41000), _slice("192.0.2.2", 41000), "192.0.2.2", 6443
    ) == (
        "the `kubernetes` Service sends pods to its Endpoints 192.0.2.2:41000; its EndpointSlice 192.0.2.2:41000, "
        "but the API server serves 192.0.2.2:6443"
    )
    assert kubernetes_service_problem(_endpoints("192.0.2.2", 6443), None, "192.0.2.2", 6443) == (
        "the `kubernetes` Service sends pods to its EndpointSlice none, but the API server serves 192.0.2.2:6443"
    )
    both = {"subsets": [{"addresses": [{"ip": "192.0.2.2"}, {"ip": "192.0.2.9"}], "ports": [{"port": 6443}]}]}
    assert kubernetes_service_problem(both, _slice("192.0.2.2", 6443), "192.0.2.2", 6443) == (
        "the `kubernetes` Service sends pods to its Endpoints 192.0.2.2:6443, 192.0.2.9:6443, "
        "but the API server serves 192.0.2.2:6443"
    )
