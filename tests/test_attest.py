"""Signed evidence: ``--attest KEY`` and ``mtlsprobe evidence verify``.

The PAE and Ed25519 signatures are checked against the DSSE project's own test vectors
(secure-systems-lab/dsse, protocol.md and testvectors/vectors.json, Apache-2.0): an
independent implementation agrees byte for byte. Then the round trip with both key
types, and the liars: every single-byte change of the payload or the signature, a
swapped payload type, another key, an edited keyid, an edited or re-indented report,
must not verify; the private key never appears in any output.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from jobs.cli import main as cli
from probe import __version__
from probe.attest import (
    PAYLOAD_TYPE,
    PREDICATE_TYPE,
    Signer,
    VerifyError,
    canonical,
    envelope,
    key_id,
    pae,
    parse_envelope,
    sha256_hex,
    statement,
    verify,
)
from probe.results import Result, Verdict
from tests.signkeys import write_key_pair
from tests.tlsservers import plaintext_http, serving

ROOT = Path(__file__).resolve().parent.parent

# DSSE testvectors/vectors.json: key "A" (RFC 8032 test 1) and its "single-signature" case.
SEED_A = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
PUB_A = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
VECTOR_PAYLOAD = b'{"_type":"https://in-toto.io/Statement/v1"}'
VECTOR_PAE = bytes.fromhex(
    "445353457631203238206170706c69636174696f6e2f766e642e696e2d746f746f2b6a736f6e2034"
    "33207b225f74797065223a2268747470733a2f2f696e2d746f746f2e696f2f53746174656d656e74"
    "2f7631227d"
)
VECTOR_SIG = (
    "2WAfaHm5jluo0w+0rk8uVkluELJYWjSmU9x7EUzx+AyteDGJ4/nqyJXfmAUVFIAoQafWm7AxBZNw5M9ixNHiCA=="
)


def test_pae_and_signature_match_the_dsse_test_vectors() -> None:
    # protocol.md's worked example, then the vector file's.
    assert pae("http://example.com/HelloWorld", b"hello world") == (
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    )
    assert pae(PAYLOAD_TYPE, VECTOR_PAYLOAD) == VECTOR_PAE
    assert pae("application/vnd.exämple+json", b"")[:10] == b"DSSEv1 29 "  # bytes, not chars
    assert pae(PAYLOAD_TYPE, b"").endswith(b" 0 ")
    key = ed25519.Ed25519PrivateKey.from_private_bytes(SEED_A)
    assert key.public_key().public_bytes_raw() == PUB_A
    # Ed25519 is deterministic: our PAE + signer give the vector's signature exactly.
    assert base64.b64encode(Signer(key).sign(VECTOR_PAE)).decode() == VECTOR_SIG


def _keys(tmp: Path) -> dict[str, tuple[Path, Path, bytes]]:
    out = {}
    for name, key in (
        ("ed25519", ed25519.Ed25519PrivateKey.generate()),
        ("p256", ec.generate_private_key(ec.SECP256R1())),
    ):
        priv, pub = tmp / f"{name}.pem", tmp / f"{name}.pub.pem"
        out[name] = (priv, pub, write_key_pair(key, priv, pub))
    return out


RESULTS = [
    Result("plaintext", "ns-a/echo", Verdict.PASS, "reset", endpoint="10.0.0.1:80"),
    Result("peer-cert", "ns-a/echo", Verdict.FAIL, "expired", endpoint="10.0.0.1:80"),
    Result("mesh", "ns-a/echo", Verdict.ERROR, "timed out"),
    Result("self", "ns-a/echo", Verdict.SKIP, "no admin"),
]
REPORT: dict[str, Any] = {
    "results": [r.to_dict() for r in RESULTS],
    "summary": {"pass": 1, "fail": 1, "error": 1, "skip": 1},
}


def _signed(signer: Signer) -> dict[str, Any]:
    stmt = statement(REPORT, RESULTS, cluster="https://k8s:6443", run_id="r1", version="9")
    return envelope(stmt, signer)


@pytest.mark.parametrize("alg", ["ed25519", "p256"])
def test_every_byte_of_payload_and_signature_matters(tmp_path: Path, alg: str) -> None:
    from probe.attest import load_public_key

    priv, pub, _ = _keys(tmp_path)[alg]
    signer = Signer.from_file(priv)
    public = load_public_key(pub)
    env = _signed(signer)
    ok = verify(env, public)
    assert ok.statement["predicate"]["report"] == REPORT
    assert ok.key_id == key_id(public)
    payload = base64.b64decode(env["payload"])
    sig = base64.b64decode(env["signatures"][0]["sig"])
    for field, raw in (("payload", payload), ("sig", sig)):
        for i in range(len(raw)):
            changed = bytearray(raw)
            changed[i] ^= 0x01
            bad = json.loads(json.dumps(env))
            encoded = base64.b64encode(bytes(changed)).decode()
            if field == "payload":
                bad["payload"] = encoded
            else:
                bad["signatures"][0]["sig"] = encoded
            with pytest.raises(VerifyError):
                verify(bad, public)
    # And the envelope as text: any character of the base64 strings changed.
    text = json.dumps(env)
    for field in (env["payload"], env["signatures"][0]["sig"]):
        start = text.index(field)
        for i in range(start, start + len(field), 7 if alg == "p256" else 3):
            edited = text[:i] + chr(ord(text[i]) ^ 0x01) + text[i + 1 :]
            with pytest.raises(VerifyError):
                verify(parse_envelope(edited.encode()), public)


def test_other_key_swapped_type_keyid_and_report_edits_fail(tmp_path: Path) -> None:
    from probe.attest import load_public_key

    keys = _keys(tmp_path)
    signer = Signer.from_file(keys["ed25519"][0])
    public = load_public_key(keys["ed25519"][1])
    env = _signed(signer)
    with pytest.raises(VerifyError, match="signature does not verify"):
        verify(env, load_public_key(keys["p256"][1]))
    with pytest.raises(VerifyError, match="signature"):
        verify({**env, "payloadType": "application/json"}, public)
    bad_kid = json.loads(json.dumps(env))
    bad_kid["signatures"][0]["keyid"] = "0" * 64
    with pytest.raises(VerifyError):
        verify(bad_kid, public)
    # A detached report: the same document verifies in any layout; a changed one does not.
    assert verify(env, public, json.loads(json.dumps(REPORT, indent=4)))
    edited = json.loads(json.dumps(REPORT))
    edited["results"][1]["verdict"] = "pass"
    with pytest.raises(VerifyError, match="report file does not match"):
        verify(env, public, edited)
    # Someone re-signs an edited statement with their own key: not ours.
    forged = statement(edited, RESULTS, cluster="c", run_id="r1", version="9")
    other = Signer(ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(VerifyError):
        verify(envelope(forged, other), public)
    # Signed by us, but claiming PASSED over a report with a fail and an error.
    lying = statement(REPORT, RESULTS, cluster="c", run_id="r1", version="9")
    lying["predicate"]["result"] = "PASSED"
    with pytest.raises(VerifyError, match="contradicts"):
        verify(envelope(lying, signer), public)
    lying["predicate"]["result"] = "FAILED"
    lying["predicate"]["summary"] = {"pass": 4, "fail": 0, "error": 0, "skip": 0}
    with pytest.raises(VerifyError, match="summary"):
        verify(envelope(lying, signer), public)
    # Signed by us but the embedded report edited before signing breaks the digest link.
    stmt = statement(REPORT, RESULTS, cluster="c", run_id="r1", version="9")
    stmt["predicate"]["report"] = edited
    with pytest.raises(VerifyError, match="embedded report"):
        verify(envelope(stmt, signer), public)


def test_statement_shape() -> None:
    stmt = statement(REPORT, RESULTS, cluster="https://k8s:6443", run_id="r1", version="9")
    assert stmt["_type"] == "https://in-toto.io/Statement/v1"
    assert stmt["predicateType"] == PREDICATE_TYPE
    (subject,) = stmt["subject"]
    assert subject["name"] == "https://k8s:6443/r1"
    assert subject["digest"] == {"sha256": sha256_hex(canonical(REPORT))}
    p = stmt["predicate"]
    assert p["result"] == "FAILED"
    assert p["passedTests"] == ["plaintext ns-a/echo 10.0.0.1:80"]
    # An error could not observe: it is not a pass, it fails the attestation too.
    assert p["failedTests"] == ["peer-cert ns-a/echo 10.0.0.1:80", "mesh ns-a/echo"]
    only_pass = statement(REPORT, RESULTS[:1] + RESULTS[3:], cluster="c", run_id="r", version="9")
    assert only_pass["predicate"]["result"] == "PASSED"


def _cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(list(argv))
    return code, out.getvalue(), err.getvalue()


def _strict_target(path: Path, name: str, port: int, *, endpoint: bool = True) -> Path:
    """A targets file of one STRICT target at 127.0.0.1:``port``, its endpoint listed
    (or, without ``endpoint``, resolved from the host)."""
    t: dict[str, Any] = {"name": name, "host": "127.0.0.1", "port": port, "expect": "STRICT"}
    if endpoint:
        t["endpoints"] = [f"127.0.0.1:{port}"]
    path.write_text(yaml.safe_dump({"trustDomain": "cluster.local", "targets": [t]}))
    return path


def test_check_attest_then_verify_end_to_end(tmp_path: Path) -> None:
    keys = _keys(tmp_path)
    with serving(plaintext_http) as leaky:
        targets = _strict_target(tmp_path / "targets.yaml", "ns-a/leaky", leaky.endpoint.port)
        env_file = tmp_path / "evidence.json"
        code, out, err = _cli(
            "check",
            "-f",
            str(targets),
            "--checks",
            "plaintext",
            "-o",
            "json",
            "--compliance",
            str(ROOT / "docs" / "compliance-example.yaml"),
            "--attest",
            str(keys["p256"][0]),
            "--attest-out",
            str(env_file),
        )
    assert code == 1, err  # STRICT port answered plaintext: a fail
    for _, _, pem in keys.values():  # the key is nowhere
        assert pem.decode() not in out + err + env_file.read_text()
        body = b"".join(pem.splitlines()[1:-1]).decode()
        assert body[:40] not in out + err + env_file.read_text()
    report = json.loads(out)
    verified_code, vout, verr = _cli(
        "evidence", "verify", "--key", str(keys["p256"][1]), str(env_file)
    )
    assert verified_code == 0, verr
    assert "FAILED (0 pass, 1 fail, 0 error, 0 skip)" in vout
    assert "configuration targets:targets.yaml: sha256:" in vout
    # The signed report is the JSON report the user saw, with the control IDs in it.
    code, jout, _ = _cli(
        "evidence", "verify", "--key", str(keys["p256"][1]), "--json", str(env_file)
    )
    stmt = json.loads(jout)
    assert stmt["predicate"]["report"] == report
    assert "PCI DSS 4.0 4.2.1" in report["results"][0]["controls"]
    config = {c["name"]: c for c in stmt["predicate"]["configuration"]}
    assert config["targets:targets.yaml"]["digest"]["sha256"] == sha256_hex(targets.read_bytes())
    assert config["mtlsprobe"]["annotations"]["version"] == __version__
    assert "compliance:compliance-example.yaml" in config
    # The saved report checks out against the attestation; an edited one does not.
    saved = tmp_path / "report.json"
    saved.write_text(out)
    assert (
        _cli(
            "evidence",
            "verify",
            "--key",
            str(keys["p256"][1]),
            "--report",
            str(saved),
            str(env_file),
        )[0]
        == 0
    )
    saved.write_text(out.replace('"fail"', '"pass"'))
    code, _, verr = _cli(
        "evidence", "verify", "--key", str(keys["p256"][1]), "--report", str(saved), str(env_file)
    )
    assert code == 1 and "NOT VERIFIED" in verr and "report file" in verr
    # Wrong key: exit 1, one line.
    code, _, verr = _cli("evidence", "verify", "--key", str(keys["ed25519"][1]), str(env_file))
    assert code == 1 and verr.count("\n") == 1
    # One flipped byte anywhere in the signed payload: exit 1.
    env = json.loads(env_file.read_text())
    raw = bytearray(base64.b64decode(env["payload"]))
    raw[len(raw) // 2] ^= 0x20
    env["payload"] = base64.b64encode(bytes(raw)).decode()
    env_file.write_text(json.dumps(env))
    assert _cli("evidence", "verify", "--key", str(keys["p256"][1]), str(env_file))[0] == 1


def test_envelope_found_in_a_log_after_the_report(tmp_path: Path) -> None:
    """The CronJob prints the envelope as one line after the table (--attest-out -)."""
    keys = _keys(tmp_path)
    targets = _strict_target(tmp_path / "t.yaml", "ns/x", 1)
    code, out, err = _cli(
        "check",
        "-f",
        str(targets),
        "--checks",
        "plaintext",
        "--timeout",
        "2",
        "--attest",
        str(keys["ed25519"][0]),
        "--attest-out",
        "-",
    )
    assert code == 2
    log = tmp_path / "job.log"
    log.write_text("mtlsprobe run x: 2 probe Job(s)\n" + out + err)
    code, vout, _ = _cli("evidence", "verify", "--key", str(keys["ed25519"][1]), str(log))
    assert code == 0 and "FAILED (0 pass, 0 fail, 1 error, 0 skip)" in vout
    # An older genuine envelope put in front of it: ambiguous, refused.
    envelope_line = next(ln for ln in out.splitlines() if ln.startswith('{"payloadType"'))
    log.write_text(envelope_line + "\n" + log.read_text())
    code, _, verr = _cli("evidence", "verify", "--key", str(keys["ed25519"][1]), str(log))
    assert code == 1 and "2 DSSE envelopes" in verr


@pytest.mark.parametrize("problem", ["rsa", "p384", "encrypted", "garbage", "missing", "public"])
def test_unusable_signing_keys_are_usage_errors_before_probing(
    tmp_path: Path, problem: str
) -> None:
    key = tmp_path / "key.pem"
    secret = b""
    if problem == "rsa":
        k: Any = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    elif problem == "p384":
        k = ec.generate_private_key(ec.SECP384R1())
    else:
        k = ed25519.Ed25519PrivateKey.generate()
    if problem in ("rsa", "p384"):
        secret = k.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    elif problem == "encrypted":
        secret = k.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pw"),
        )
    elif problem == "garbage":
        secret = (
            b"-----BEGIN PRIVATE KEY-----\nAAAA" + b"Zm9v" * 10 + b"\n-----END PRIVATE KEY-----\n"
        )
    elif problem == "public":
        secret = k.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    if problem != "missing":
        key.write_bytes(secret)
    targets = _strict_target(tmp_path / "t.yaml", "ns/x", 1, endpoint=False)
    code, out, err = _cli("check", "-f", str(targets), "--attest", str(key))
    assert code == 64, err
    assert out == "" and err.count("\n") == 1 and "--attest" in err
    if secret:
        body = b"".join(secret.splitlines()[1:-1]).decode()
        assert body[:32] not in err


def test_verify_usage_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    keys = _keys(tmp_path)
    code, _, err = _cli("evidence", "verify", "--key", str(keys["p256"][1]), str(missing))
    assert code == 64 and "cannot read" in err
    code, _, err = _cli("evidence", "verify", "--key", str(keys["p256"][0]), str(missing))
    assert code == 64 and "not a PEM public key" in err
    junk = tmp_path / "junk.json"
    junk.write_text("hello\n")
    code, _, err = _cli("evidence", "verify", "--key", str(keys["p256"][1]), str(junk))
    assert code == 1 and "no DSSE envelope" in err
