"""The trusted XFCC element must be bound to the probe's own certificate (``Hash=``).

An app reached in plaintext (no server sidecar, a DestinationRule DISABLE) can echo the
marker and fabricate an XFCC with the right ``By=``/``URI=``: both are public SPIFFE IDs.
Only the hash of the certificate the probe's sidecar presents is not: pure judgements
here, then the same through the sidecar stand-in with an Envoy-admin stand-in that
serves the probe's certificate (real sockets, a real certificate)."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from probe.checks import mesh, xfcc_spoof
from probe.checks.base import Check, RunContext, Settings
from probe.checks.mesh import MeshCheck
from probe.checks.meshcall import MeshResponse
from probe.checks.xfcc_spoof import XfccSpoofCheck
from probe.engine import run_checks
from probe.errors import ObservationError
from probe.model import Expect, Source, Target, TargetsFile
from probe.pki import CertificateAuthority, Issued
from probe.reflect import MARKER_HEADER, App, Reflection
from probe.results import Result, Verdict
from probe.xfcc import HashOutcome, OwnCerts, compare_hash, parse_element
from tests.runone import echo_target
from tests.sidecar_standin import SidecarBehaviour, http_server, sidecar

TD = "cluster.local"
SRC = f"spiffe://{TD}/ns/mtlsprobe/sa/mtlsprobe"
ECHO = f"spiffe://{TD}/ns/ns-a/sa/echo"
OURS = "ab" * 32
OTHER = "cd" * 32
TARGET = echo_target(host="echo.ns-a.svc", identity=ECHO)


def element(hash_part: str) -> str:
    return f'By={ECHO};{hash_part}Subject="";URI={SRC}'


def reflected(xfcc: str) -> MeshResponse:
    headers = ((MARKER_HEADER, "m1"), ("x-forwarded-client-cert", xfcc))
    return MeshResponse(
        200, "istio-envoy", b"{}", reflection=Reflection(App.HTTPBIN, headers), marker="m1"
    )


KNOWN = OwnCerts(hashes=frozenset({OURS, "ef" * 32}))


# --- pure: mesh.judge ---------------------------------------------------------------------


def test_hash_of_one_of_our_certificates_passes_and_says_so() -> None:
    for h in (OURS, OURS.upper(), "ef" * 32):  # either certificate held during rotation
        j = mesh.judge(TARGET, SRC, reflected(element(f"Hash={h};")), own=KNOWN)
        assert j.verdict is Verdict.PASS, j
        assert j.evidence["xfcc_hash"].startswith("matched: ")
        assert "this probe's certificate" in j.reason


@pytest.mark.parametrize(
    "hash_part",
    [f"Hash={OTHER};", "", "Hash=;", "Hash=made-up;", f"Hash={OURS}00;", f"Hash={OURS[:-2]};"],
)
def test_hash_not_ours_or_missing_fails(hash_part: str) -> None:
    j = mesh.judge(TARGET, SRC, reflected(element(hash_part)), own=KNOWN)
    assert j.verdict is Verdict.FAIL, j
    assert "not written for this probe's certificate" in j.reason


def test_mismatch_after_a_refetch_still_fails_when_the_sidecar_never_renewed() -> None:
    again = OwnCerts(hashes=KNOWN.hashes, refreshed=True)
    j = mesh.judge(TARGET, SRC, reflected(element(f"Hash={OTHER};")), own=again)
    assert j.verdict is Verdict.FAIL and "fetched again" in j.reason, j


def test_mismatch_on_a_renewed_sidecar_is_an_error_not_a_pass() -> None:
    """Envoy keeps pooled connections on a retired certificate: a well-formed hash that
    is not among the held ones may be stale, and cannot be told from a fabricated one."""
    renewed = OwnCerts(hashes=KNOWN.hashes, refreshed=True, retired_possible="it renewed")
    j = mesh.judge(TARGET, SRC, reflected(element(f"Hash={OTHER};")), own=renewed)
    assert j.verdict is Verdict.ERROR and "stale" in j.reason, j
    # a hash Envoy could never have written stays a fail
    j = mesh.judge(TARGET, SRC, reflected(element("Hash=made-up;")), own=renewed)
    assert j.verdict is Verdict.FAIL, j


def test_two_hash_values_are_never_a_pass() -> None:
    j = mesh.judge(TARGET, SRC, reflected(element(f"Hash={OURS};Hash={OTHER};")), own=KNOWN)
    assert j.verdict is not Verdict.PASS, j


def test_unknown_own_certificate_keeps_the_verdict_and_says_so() -> None:
    own = OwnCerts(unknown="the sidecar admin is unreachable")
    j = mesh.judge(TARGET, SRC, reflected(element(f"Hash={OTHER};")), own=own)
    assert j.verdict is Verdict.PASS, j
    assert j.evidence["xfcc_hash"] == "not compared: the sidecar admin is unreachable"
    assert "Hash= not compared" in j.reason
    j = mesh.judge(TARGET, SRC, reflected(element(f"Hash={OTHER};")))
    assert j.verdict is Verdict.PASS and j.evidence["xfcc_hash"].startswith("not compared")


def test_identity_problems_come_before_the_hash() -> None:
    bad = f'By=spiffe://{TD}/ns/x/sa/y;Hash={OURS};Subject="";URI={SRC}'
    j = mesh.judge(TARGET, SRC, reflected(bad), own=KNOWN)
    assert j.verdict is Verdict.FAIL and "ns/x/sa/y" in j.reason


def test_compare_hash_outcomes() -> None:
    assert compare_hash(parse_element(element(f"Hash={OURS};")), KNOWN)[0] is HashOutcome.MATCH
    assert compare_hash(parse_element(element("")), KNOWN)[0] is HashOutcome.MISMATCH
    unknown = compare_hash(parse_element(element("")), OwnCerts(unknown="why"))
    assert unknown == (HashOutcome.NOT_COMPARED, "not compared: why")


# --- pure: xfcc_spoof.judge ---------------------------------------------------------------


def test_spoof_requires_the_genuine_element_to_carry_our_hash() -> None:
    verdict, _, _, ev = xfcc_spoof.judge(
        "feedface",
        reflected(element(f"Hash={OURS};")),
        expected_by=ECHO,
        expected_uri=SRC,
        own=KNOWN,
    )
    assert verdict is Verdict.PASS and str(ev["xfcc_hash"]).startswith("matched")
    for hash_part in (f"Hash={OTHER};", ""):
        with pytest.raises(ObservationError, match="not written for this probe's certificate"):
            xfcc_spoof.judge(
                "feedface",
                reflected(element(hash_part)),
                expected_by=ECHO,
                expected_uri=SRC,
                own=KNOWN,
            )
    verdict, _, reason, ev = xfcc_spoof.judge(
        "feedface",
        reflected(element(f"Hash={OTHER};")),
        expected_by=ECHO,
        expected_uri=SRC,
        own=OwnCerts(unknown="no admin"),
    )
    assert verdict is Verdict.PASS and ev["xfcc_hash"] == "not compared: no admin"
    assert "not compared: no admin" in reason


# --- through the sidecar stand-in, with the probe's real certificate on an admin stand-in ---


@pytest.fixture(scope="module")
def probe_cert() -> Issued:
    ca = CertificateAuthority.create_root(TD, key_type="ec")
    return ca.issue_workload(SRC, key_type="ec")


def der_hash(issued: Issued) -> str:
    return hashlib.sha256(issued.cert.public_bytes(Encoding.DER)).hexdigest()


class Admin:
    """An Envoy admin stand-in serving the probe's certificate in a secrets dump, and
    counting what it is asked (one fetch per run, one more after a mismatch)."""

    def __init__(self, issued: Issued, uptime: str = "3s") -> None:
        pem = base64.b64encode(issued.chain_pem()).decode()
        self.dump = {
            "configs": [
                {
                    "name": "default",
                    "secret": {
                        "name": "default",
                        "tls_certificate": {
                            "certificate_chain": {"inline_bytes": pem},
                            "private_key": {"inline_bytes": "W3JlZGFjdGVkXQ=="},
                        },
                    },
                }
            ]
        }
        self.uptime = uptime
        self.asked: list[str] = []
        self.lock = threading.Lock()

    def handler(self) -> type[BaseHTTPRequestHandler]:
        admin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                with admin.lock:
                    admin.asked.append(self.path)
                doc: object = None
                if self.path == "/config_dump?resource=dynamic_active_secrets":
                    doc = admin.dump
                elif self.path == "/server_info":
                    doc = {"state": "LIVE", "uptime_current_epoch": admin.uptime}
                body = json.dumps(doc).encode() if doc is not None else b"not found"
                self.send_response(200 if doc is not None else 404)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return Handler


def run_many(checks: list[Check], proxy: str, admin: str | None, n: int = 1) -> list[Result]:
    targets = tuple(
        Target(
            name=f"ns-a/echo-{i}",
            host=f"echo-{i}.ns-a.svc",
            port=8080,
            expect=Expect.STRICT,
            identity=ECHO,
            echo=True,
        )
        for i in range(n)
    )
    tf = TargetsFile(
        trust_domain=TD,
        targets=targets,
        source=Source(identity=SRC, sidecar_proxy=proxy, sidecar_admin=admin),
    )
    ctx = RunContext(tf, Settings(timeout=3))
    try:
        return [r for r in run_checks(checks, ctx) if r.check in ("mesh", "xfcc-spoof")]
    finally:
        ctx.close()


def test_genuine_hash_passes_with_one_admin_fetch_for_all_checks(
    echo: tuple[str, int], probe_cert: Issued
) -> None:
    admin = Admin(probe_cert)
    b_hash = der_hash(probe_cert)
    # the stand-in sets the element a real server sidecar would write, with our hash
    b = SidecarBehaviour(mode="raw", raw_xfcc=element(f"Hash={b_hash};"), upstream=echo)
    with http_server(admin.handler()) as admin_url, sidecar(b) as proxy:
        results = run_many([MeshCheck(), XfccSpoofCheck()], proxy, admin_url, n=4)
    assert len(results) == 8
    for r in results:
        assert r.verdict is Verdict.PASS, r
        assert (
            r.evidence["xfcc_hash"] == f"matched: Hash={b_hash} is the probe sidecar's certificate"
        )
    # one secrets fetch for the run (the mesh check also reads /stats around each call)
    assert [p for p in admin.asked if not p.startswith("/stats")] == [
        "/config_dump?resource=dynamic_active_secrets"
    ]


@pytest.mark.parametrize("hash_part", [f"Hash={OTHER};", ""])
def test_fabricated_reflection_fails(
    echo: tuple[str, int], probe_cert: Issued, hash_part: str
) -> None:
    """A perfect reflection with the public identities and a made-up (or no) hash."""
    admin = Admin(probe_cert)
    b = SidecarBehaviour(mode="raw", raw_xfcc=element(hash_part), upstream=echo)
    with http_server(admin.handler()) as admin_url, sidecar(b) as proxy:
        results = run_many([MeshCheck(), XfccSpoofCheck()], proxy, admin_url, n=3)
    by = {r.check: r for r in results}
    assert by["mesh"].verdict is Verdict.FAIL, by["mesh"]
    assert "not written for this probe's certificate" in by["mesh"].reason
    assert by["xfcc-spoof"].verdict is Verdict.ERROR, by["xfcc-spoof"]
    assert all(r.verdict is not Verdict.PASS for r in results)
    fetches = admin.asked.count("/config_dump?resource=dynamic_active_secrets")
    # once, and once more only when a hash is there to mismatch
    assert fetches == (2 if hash_part else 1), admin.asked


def test_renewed_sidecar_turns_an_unknown_hash_into_an_error(
    echo: tuple[str, int], probe_cert: Issued
) -> None:
    admin = Admin(probe_cert, uptime="86400s")  # started a day before its certificate
    b = SidecarBehaviour(mode="raw", raw_xfcc=element(f"Hash={OTHER};"), upstream=echo)
    with http_server(admin.handler()) as admin_url, sidecar(b) as proxy:
        (r,) = run_many([MeshCheck()], proxy, admin_url)
    assert r.verdict is Verdict.ERROR and "renewed" in r.reason, r


def test_admin_without_our_certificate_is_never_a_pass(echo: tuple[str, int]) -> None:
    """The sidecar presents someone else's certificate, yet the element names the probe
    as the client (red-team round 4: it passed as "not compared", so an app fabricating
    the element in plaintext passed whenever source.identity was not the sidecar's)."""
    other = CertificateAuthority.create_root(TD, key_type="ec").issue_workload(
        f"spiffe://{TD}/ns/x/sa/someone-else", key_type="ec"
    )
    admin = Admin(other)
    b = SidecarBehaviour(upstream=echo)
    with http_server(admin.handler()) as admin_url, sidecar(b) as proxy:
        (r,) = run_many([MeshCheck()], proxy, admin_url)
    assert r.verdict is Verdict.ERROR, r
    assert "no certificate for source.identity" in r.reason
    assert "ns/x/sa/someone-else" in r.reason


@pytest.mark.parametrize("admin_kind", ["closed-port", "no-certificates"])
def test_named_admin_that_cannot_show_our_certificate_is_never_a_pass(
    echo: tuple[str, int], admin_kind: str
) -> None:
    """An app reached in plaintext writes the element with both public identities and a
    made-up hash; the targets file names the sidecar's admin, which does not answer (or
    shows no certificate). The only unforgeable signature is unreadable: error, never
    the old "pass, hash not compared" (red-team round 4, left open there)."""
    import socket

    b = SidecarBehaviour(mode="raw", raw_xfcc=element(f"Hash={OTHER};"), upstream=echo)
    if admin_kind == "closed-port":
        with socket.socket() as s:  # a port nothing listens on: bound, never listening
            s.bind(("127.0.0.1", 0))
            url = f"http://127.0.0.1:{s.getsockname()[1]}"
            with sidecar(b) as proxy:
                results = run_many([MeshCheck(), XfccSpoofCheck()], proxy, url)
    else:
        empty = Admin(CertificateAuthority.create_root(TD).issue_workload(SRC))
        empty.dump = {"configs": []}
        with http_server(empty.handler()) as url, sidecar(b) as proxy:
            results = run_many([MeshCheck(), XfccSpoofCheck()], proxy, url)
    by = {r.check: r for r in results}
    assert by["mesh"].verdict is Verdict.ERROR, by["mesh"]
    assert "cannot be bound" in by["mesh"].reason and "sidecarAdmin" in by["mesh"].reason
    assert by["xfcc-spoof"].verdict is not Verdict.PASS, by["xfcc-spoof"]
