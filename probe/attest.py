"""Signed evidence: the JSON results in an in-toto Statement inside a DSSE envelope.

An auditor needs results that cannot be edited after the fact. ``--attest KEY`` wraps
the JSON report (the contract's document) in an in-toto Statement v1 with the
test-result predicate (``https://in-toto.io/attestation/test-result/v0.1``):

- ``subject``: the cluster and the run, with the sha256 of the report's canonical JSON;
- ``predicate.result`` ``PASSED`` / ``FAILED`` (an ``error`` is not a pass: it fails),
  ``passedTests`` / ``failedTests`` (``<check> <target> [endpoint]``), and
  ``configuration``: the targets file's sha256 and the tool's version (and the
  compliance mapping's, when one was used);
- ``predicate.report``: the report itself (in-toto consumers ignore fields they do
  not know), so one file is the whole evidence.

The Statement is signed per DSSE v1.0 (protocol.md: the signature covers
``PAE(payloadType, payload)``, never the bare payload, so a payload cannot be
re-labelled as another type) with an ECDSA P-256 (SHA-256, DER signature) or an
Ed25519 key through ``cryptography``. ``keyid`` is the sha256 of the public key's
SubjectPublicKeyInfo; it is a hint only: verification tries the given public key.

``verify`` checks, in order: the envelope's shape, the payload type, the signature
over the PAE, the Statement's type and predicate type, and that the subject digest
equals the digest of the embedded report (and of a detached report file, if given).
Any mismatch is a ``VerifyError`` naming it. The private key never leaves ``Signer``:
it is not logged, not exported, not in any error message.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from probe.jsonline import json_object
from probe.results import Result, Verdict, summarize

PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://in-toto.io/attestation/test-result/v0.1"
MAX_KEY_BYTES = 64 << 10
MAX_ENVELOPE_BYTES = 256 << 20


class AttestError(ValueError):
    """A key or input that cannot be used for signing; one line, no key material."""


class VerifyError(ValueError):
    """The envelope does not verify; one line naming the first mismatch."""


# ---- encoding --------------------------------------------------------------------------------


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding: lengths are ASCII decimal byte counts."""
    t = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def canonical(doc: Any) -> bytes:
    """The bytes a digest is taken over: sorted keys, no spaces, UTF-8. Recomputable
    from the parsed JSON, so re-indenting a report does not change its digest."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode(
        "utf-8", "surrogatepass"
    )


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _b64decode(text: object, what: str) -> bytes:
    """Standard or URL-safe base64 (DSSE: verifiers MUST accept either)."""
    if not isinstance(text, str):
        raise VerifyError(f"{what} is not a base64 string")
    s = text.strip()
    alphabet = b"-_" if ("-" in s or "_" in s) else None
    try:
        raw = base64.b64decode(s + "=" * (-len(s) % 4), altchars=alphabet, validate=True)
    except (binascii.Error, ValueError):
        raise VerifyError(f"{what} is not valid base64") from None
    # Non-canonical trailing bits decode to the same bytes: an edited envelope must not
    # verify, so the text has to be the one encoding of the bytes.
    if base64.b64encode(raw, altchars=alphabet).decode("ascii").rstrip("=") != s.rstrip("="):
        raise VerifyError(f"{what} is not canonical base64")
    return raw


# ---- keys ----------------------------------------------------------------------------------------

PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
PublicKey = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey


def read_bounded(path: Path, what: str, limit: int, hint: str = "") -> bytes:
    """The bytes of ``path``, reading at most one past ``limit`` so that a huge file is
    refused without being loaded; an ``AttestError`` naming ``what`` otherwise."""
    try:
        with path.open("rb") as f:
            data = f.read(limit + 1)
    except OSError as exc:
        raise AttestError(f"{what} {path}: cannot read: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise AttestError(f"{what} {path}: larger than {limit} bytes{hint}")
    return data


def _read_key_file(path: Path, what: str) -> bytes:
    return read_bounded(path, what, MAX_KEY_BYTES, " (not a key)")


def key_id(public: PublicKey) -> str:
    spki = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return sha256_hex(spki)


def _check_type(key: object, path: Path, what: str) -> None:
    if isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
        return
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        if isinstance(key.curve, ec.SECP256R1):
            return
        raise AttestError(f"{what} {path}: ECDSA key on {key.curve.name}; use P-256 (secp256r1)")
    raise AttestError(
        f"{what} {path}: {type(key).__name__} keys are not supported; use ECDSA P-256 or Ed25519"
    )


@dataclass(frozen=True)
class Signer:
    """Holds the private key; only ``sign`` and the public half come out."""

    _key: PrivateKey = field(repr=False)

    @classmethod
    def from_file(cls, path: Path) -> Signer:
        data = _read_key_file(path, "--attest")
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except TypeError:
            raise AttestError(
                f"--attest {path}: the key is encrypted; give an unencrypted PEM key "
                "(mount it from a Secret)"
            ) from None
        except (ValueError, binascii.Error):
            # No detail from the parser: it could quote key bytes.
            raise AttestError(f"--attest {path}: not a PEM private key (PKCS#8 or SEC1)") from None
        except Exception:  # any parser failure: one line, no key material
            raise AttestError(f"--attest {path}: cannot load the private key") from None
        _check_type(key, path, "--attest")
        return cls(key)  # type: ignore[arg-type]

    @property
    def public(self) -> PublicKey:
        return self._key.public_key()

    @property
    def algorithm(self) -> str:
        return "ed25519" if isinstance(self._key, ed25519.Ed25519PrivateKey) else "ecdsa-p256"

    def sign(self, message: bytes) -> bytes:
        if isinstance(self._key, ed25519.Ed25519PrivateKey):
            return self._key.sign(message)
        return self._key.sign(message, ec.ECDSA(hashes.SHA256()))


def load_public_key(path: Path) -> PublicKey:
    data = _read_key_file(path, "--key")
    try:
        key = serialization.load_pem_public_key(data)
    except Exception:
        raise AttestError(f"--key {path}: not a PEM public key (SubjectPublicKeyInfo)") from None
    _check_type(key, path, "--key")
    return key  # type: ignore[return-value]


def _verify_sig(public: PublicKey, sig: bytes, message: bytes) -> bool:
    try:
        if isinstance(public, ed25519.Ed25519PublicKey):
            public.verify(sig, message)
        else:
            public.verify(sig, message, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        return False
    return True


# ---- the statement -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Material:
    """A configuration input (targets file, compliance mapping) named by its digest."""

    name: str
    data: bytes

    def descriptor(self) -> dict[str, Any]:
        return {"name": self.name, "digest": {"sha256": sha256_hex(self.data)}}


def test_name(r: Result) -> str:
    return " ".join(x for x in (r.check, r.target, r.endpoint) if x)


def statement(
    report: dict[str, Any],
    results: Sequence[Result],
    *,
    cluster: str,
    run_id: str,
    version: str,
    materials: Sequence[Material] = (),
    extra_configuration: Sequence[dict[str, Any]] = (),
) -> dict[str, Any]:
    """The in-toto Statement over ``report`` (the JSON report document)."""
    passed = [test_name(r) for r in results if r.verdict is Verdict.PASS]
    failed = [test_name(r) for r in results if r.verdict in (Verdict.FAIL, Verdict.ERROR)]
    configuration: list[dict[str, Any]] = [m.descriptor() for m in materials]
    tool = {"name": "mtlsprobe", "uri": f"pkg:pypi/mtlsprobe@{version}"}
    configuration.append({**tool, "annotations": {"version": version}})
    configuration.extend(extra_configuration)
    return {
        "_type": STATEMENT_TYPE,
        "subject": [
            {
                "name": f"{cluster}/{run_id}",
                "digest": {"sha256": sha256_hex(canonical(report))},
                "annotations": {"cluster": cluster, "run": run_id},
            }
        ],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "result": "FAILED" if failed else "PASSED",
            "configuration": configuration,
            "passedTests": passed,
            "warnedTests": [],
            "failedTests": failed,
            "summary": summarize(results),
            "report": report,
        },
    }


def envelope(stmt: dict[str, Any], signer: Signer) -> dict[str, Any]:
    payload = canonical(stmt)
    sig = signer.sign(pae(PAYLOAD_TYPE, payload))
    return {
        "payloadType": PAYLOAD_TYPE,
        "payload": base64.b64encode(payload).decode("ascii"),
        "signatures": [
            {"keyid": key_id(signer.public), "sig": base64.b64encode(sig).decode("ascii")}
        ],
    }


# ---- verification ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verified:
    statement: dict[str, Any]
    key_id: str

    @property
    def predicate(self) -> dict[str, Any]:
        p = self.statement["predicate"]
        assert isinstance(p, dict)
        return p

    def summary_line(self) -> str:
        p = self.predicate
        subject = self.statement["subject"][0]
        counts = p.get("summary") or {}
        return (
            f"verified: {subject.get('name')} {p.get('result')} "
            f"({counts.get('pass', 0)} pass, {counts.get('fail', 0)} fail, "
            f"{counts.get('error', 0)} error, {counts.get('skip', 0)} skip) "
            f"signed by key {self.key_id[:16]}"
        )


def parse_envelope(data: bytes) -> dict[str, Any]:
    """The DSSE envelope in ``data``: a JSON document, or one JSON line among others
    (a pod log where the envelope was printed after the report). Two envelopes are
    refused: which run was verified must not depend on which one comes first."""
    if len(data) > MAX_ENVELOPE_BYTES:
        raise VerifyError(f"larger than {MAX_ENVELOPE_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise VerifyError("not UTF-8 text") from None
    whole = _as_envelope(text)
    if whole is not None:
        return whole
    found = [e for e in map(_as_envelope, text.splitlines()) if e is not None]
    if len(found) > 1:
        raise VerifyError(f"{len(found)} DSSE envelopes in one file: give one")
    if not found:
        raise VerifyError("no DSSE envelope (a JSON object with payloadType and signatures)")
    return found[0]


def _as_envelope(chunk: str) -> dict[str, Any] | None:
    doc = json_object(chunk.strip())
    if doc is not None and "payloadType" in doc and "signatures" in doc:
        return doc
    return None


def verify(env: dict[str, Any], public: PublicKey, report: Any = None) -> Verified:
    if not isinstance(env.get("payloadType"), str):
        raise VerifyError("payloadType is missing or not a string")
    payload = _b64decode(env.get("payload"), "payload")
    sigs = env.get("signatures")
    if not isinstance(sigs, list) or not sigs:
        raise VerifyError("no signatures")
    message = pae(env["payloadType"], payload)
    kid = key_id(public)
    ok = False
    for i, s in enumerate(sigs):
        if not isinstance(s, dict):
            raise VerifyError(f"signatures[{i}] is not an object")
        if s.get("keyid") not in (None, "", kid):
            continue  # DSSE: keyid only narrows which key to try; another signer's
        if _verify_sig(public, _b64decode(s.get("sig"), f"signatures[{i}].sig"), message):
            ok = True
            break
    if not ok:
        raise VerifyError("signature does not verify with the given public key")
    # Only after the signature: the type is authenticated, so a mismatch is the signer's.
    if env["payloadType"] != PAYLOAD_TYPE:
        raise VerifyError(f"payloadType {env['payloadType']!r} is not {PAYLOAD_TYPE}")
    try:
        stmt = json.loads(payload)
    except ValueError:
        raise VerifyError("payload is not JSON") from None
    if not isinstance(stmt, dict) or stmt.get("_type") != STATEMENT_TYPE:
        raise VerifyError(f"payload is not an in-toto Statement ({STATEMENT_TYPE})")
    if stmt.get("predicateType") != PREDICATE_TYPE:
        raise VerifyError(f"predicateType is not {PREDICATE_TYPE}")
    subjects = stmt.get("subject")
    predicate = stmt.get("predicate")
    if not isinstance(subjects, list) or len(subjects) != 1 or not isinstance(predicate, dict):
        raise VerifyError("the Statement needs one subject and a predicate")
    first = subjects[0] if isinstance(subjects[0], dict) else {}
    digest = (first.get("digest") or {}).get("sha256")
    if not isinstance(digest, str):
        raise VerifyError("the subject has no sha256 digest")
    embedded = predicate.get("report")
    if embedded is None or sha256_hex(canonical(embedded)) != digest:
        raise VerifyError("the embedded report does not match the subject digest")
    if report is not None and sha256_hex(canonical(report)) != digest:
        raise VerifyError("the report file does not match the subject digest")
    # The summary printed must be the report's: a signer's predicate that says PASSED
    # over a report with failures is not evidence of a pass.
    counts = embedded.get("summary") if isinstance(embedded, dict) else None
    if not isinstance(counts, dict) or predicate.get("summary") != counts:
        raise VerifyError("the predicate's summary is not the report's")
    bad = int(counts.get("fail") or 0) + int(counts.get("error") or 0)
    if predicate.get("result") != ("FAILED" if bad else "PASSED"):
        raise VerifyError("the predicate's result contradicts the report's summary")
    return Verified(stmt, kid)


__all__ = [
    "PAYLOAD_TYPE",
    "PREDICATE_TYPE",
    "AttestError",
    "Material",
    "Signer",
    "VerifyError",
    "envelope",
    "load_public_key",
    "pae",
    "parse_envelope",
    "statement",
    "verify",
]
