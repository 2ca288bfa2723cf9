"""Servers built to make the TLS checks lie, for tests.

- ``replay13`` / ``replay12``: raw TLS record writers holding only a copied public
  certificate chain (no key). TLS 1.3: ServerHello, then encrypted
  EncryptedExtensions, [CertificateRequest], Certificate and a CertificateVerify
  signed by another key, garbage, an alert, or nothing. TLS 1.2: ServerHello,
  Certificate, a ServerKeyExchange with a signature by another key (or an alert),
  [CertificateRequest], ServerHelloDone. The key schedule is RFC 8446 section 7,
  written from the RFC with cryptography's primitives.
- ``openssl_server``: a pyOpenSSL server that holds its key but asks for no
  client certificate, or accepts any, and then misbehaves after the handshake
  (FIN, close_notify, RST after the request, a banner first, fake alert bytes).
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
from collections.abc import Callable

from cryptography.hazmat.primitives import hashes, hmac, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand
from OpenSSL import SSL

from probe import netio
from probe.pki import Issued
from tests.tlsservers import HTTP_OK, read_request

HANDSHAKE, ALERT, APP_DATA, CCS = 0x16, 0x15, 0x17, 0x14
X25519 = 0x001D
LINGER0 = struct.pack("ii", 1, 0)


# --- record layer ---------------------------------------------------------------------


def _recv_exact(conn: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = conn.recv(n - len(out))
        if not chunk:
            raise ConnectionError("peer closed")
        out += chunk
    return out


def read_record(conn: socket.socket) -> tuple[int, bytes]:
    head = _recv_exact(conn, 5)
    return head[0], _recv_exact(conn, int.from_bytes(head[3:5], "big"))


def record(ctype: int, body: bytes) -> bytes:
    return bytes([ctype, 3, 3]) + len(body).to_bytes(2, "big") + body


def handshake_msg(mtype: int, body: bytes) -> bytes:
    return bytes([mtype]) + len(body).to_bytes(3, "big") + body


def alert_record(description: int) -> bytes:
    return record(ALERT, bytes([2, description]))


def _vec(data: bytes, width: int) -> bytes:
    return len(data).to_bytes(width, "big") + data


def _ext(etype: int, data: bytes) -> bytes:
    return etype.to_bytes(2, "big") + _vec(data, 2)


class ClientHello:
    """The fields of a ClientHello these servers need."""

    def __init__(self, msg: bytes) -> None:
        self.msg = msg
        body = msg[4:]
        i = 2 + 32
        sid_len = body[i]
        self.session_id = body[i + 1 : i + 1 + sid_len]
        i += 1 + sid_len
        i += 2 + int.from_bytes(body[i : i + 2], "big")  # cipher suites
        i += 1 + body[i]  # compression methods
        end = i + 2 + int.from_bytes(body[i : i + 2], "big")
        i += 2
        self.x25519: bytes | None = None
        while i < end:
            etype = int.from_bytes(body[i : i + 2], "big")
            elen = int.from_bytes(body[i + 2 : i + 4], "big")
            data = body[i + 4 : i + 4 + elen]
            i += 4 + elen
            if etype == 51:  # key_share
                j = 2
                while j < len(data):
                    group = int.from_bytes(data[j : j + 2], "big")
                    klen = int.from_bytes(data[j + 2 : j + 4], "big")
                    if group == X25519:
                        self.x25519 = data[j + 4 : j + 4 + klen]
                    j += 4 + klen


def read_client_hello(conn: socket.socket) -> ClientHello:
    ctype, body = read_record(conn)
    if ctype != HANDSHAKE or body[0] != 1:
        raise ConnectionError("not a ClientHello")
    need = 4 + int.from_bytes(body[1:4], "big")
    while len(body) < need:
        body += read_record(conn)[1]
    return ClientHello(body[:need])


# --- TLS 1.3 key schedule (RFC 8446 section 7.1), SHA-256 suites --------------------


def _extract(salt: bytes, ikm: bytes) -> bytes:
    h = hmac.HMAC(salt, hashes.SHA256())
    h.update(ikm)
    return h.finalize()


def _expand_label(secret: bytes, label: str, context: bytes, length: int) -> bytes:
    info = length.to_bytes(2, "big") + _vec(b"tls13 " + label.encode(), 1) + _vec(context, 1)
    return HKDFExpand(hashes.SHA256(), length, info).derive(secret)


def _sha256(data: bytes) -> bytes:
    h = hashes.Hash(hashes.SHA256())
    h.update(data)
    return h.finalize()


class _Writer:
    """AES-128-GCM record protection for one direction."""

    def __init__(self, secret: bytes) -> None:
        self.aead = AESGCM(_expand_label(secret, "key", b"", 16))
        self.iv = _expand_label(secret, "iv", b"", 12)
        self.seq = 0

    def seal(self, ctype: int, data: bytes) -> bytes:
        inner = data + bytes([ctype])
        nonce = bytes(a ^ b for a, b in zip(self.iv, self.seq.to_bytes(12, "big"), strict=True))
        self.seq += 1
        aad = bytes([APP_DATA, 3, 3]) + (len(inner) + 16).to_bytes(2, "big")
        return aad + self.aead.encrypt(nonce, inner, aad)


def _certificate_13(chain_der: list[bytes]) -> bytes:
    entries = b"".join(_vec(der, 3) + b"\x00\x00" for der in chain_der)
    return handshake_msg(11, b"\x00" + _vec(entries, 3))


def _signature_scheme(der: bytes) -> int:
    from cryptography import x509

    key = x509.load_der_x509_certificate(der).public_key()
    return 0x0403 if isinstance(key, ec.EllipticCurvePublicKey) else 0x0804


def _forged_signature(scheme: int, content: bytes) -> bytes:
    """A well-formed signature by a key that is not the certificate's."""
    if scheme == 0x0403:
        return ec.generate_private_key(ec.SECP256R1()).sign(content, ec.ECDSA(hashes.SHA256()))
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
    return key.sign(content, pss, hashes.SHA256())


SIG_ALGS = _vec(b"".join(x.to_bytes(2, "big") for x in (0x0403, 0x0804, 0x0401)), 2)


def replay13(
    chain_der: list[bytes], *, ending: str = "forged-verify", request_cert: bool = False
) -> Callable[[socket.socket], None]:
    """TLS 1.3 from a server that has only the public chain. ``ending``:
    forged-verify | garbage-verify | alert | silence."""

    def handle(conn: socket.socket) -> None:
        conn.settimeout(5)
        ch = read_client_hello(conn)
        if ch.x25519 is None:
            conn.sendall(alert_record(40))
            return
        eph = x25519.X25519PrivateKey.generate()
        pub = eph.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        exts = _ext(43, b"\x03\x04") + _ext(51, X25519.to_bytes(2, "big") + _vec(pub, 2))
        sh_body = b"\x03\x03" + os.urandom(32) + _vec(ch.session_id, 1) + b"\x13\x01\x00"
        sh = handshake_msg(2, sh_body + _vec(exts, 2))
        shared = eph.exchange(x25519.X25519PublicKey.from_public_bytes(ch.x25519))
        early = _extract(b"\x00" * 32, b"\x00" * 32)
        derived = _expand_label(early, "derived", _sha256(b""), 32)
        hs_secret = _extract(derived, shared)
        transcript = ch.msg + sh
        s_hs = _expand_label(hs_secret, "s hs traffic", _sha256(transcript), 32)
        w = _Writer(s_hs)
        out = record(HANDSHAKE, sh) + record(CCS, b"\x01")
        msgs = [handshake_msg(8, b"\x00\x00")]
        if request_cert:
            msgs.append(handshake_msg(13, b"\x00" + _vec(_ext(13, SIG_ALGS), 2)))
        msgs.append(_certificate_13(chain_der))
        transcript += b"".join(msgs)
        scheme = _signature_scheme(chain_der[0])
        if ending in ("forged-verify", "garbage-verify"):
            content = b" " * 64 + b"TLS 1.3, server CertificateVerify\x00" + _sha256(transcript)
            sig = (
                _forged_signature(scheme, content) if ending == "forged-verify" else os.urandom(72)
            )
            msgs.append(handshake_msg(15, scheme.to_bytes(2, "big") + _vec(sig, 2)))
        out += b"".join(w.seal(HANDSHAKE, m) for m in msgs)
        if ending == "alert":
            out += w.seal(ALERT, bytes([2, 40]))
        conn.sendall(out)
        _drain(conn)

    return handle


def replay12(
    chain_der: list[bytes], *, ending: str = "forged-key-exchange", request_cert: bool = True
) -> Callable[[socket.socket], None]:
    """TLS 1.2 from a server that has only the public chain. ``ending``:
    forged-key-exchange | alert (after Certificate) | rsa-key-transport (picks a
    static-RSA suite, which needs no signature before the client's flight)."""

    def handle(conn: socket.socket) -> None:
        conn.settimeout(5)
        ch = read_client_hello(conn)
        scheme = _signature_scheme(chain_der[0])
        suite = b"\xc0\x2b" if scheme == 0x0403 else b"\xc0\x2f"
        if ending == "rsa-key-transport":
            suite = b"\x00\x9c"  # TLS_RSA_WITH_AES_128_GCM_SHA256
        exts = _ext(0xFF01, b"\x00") + _ext(11, b"\x01\x00")
        server_random = os.urandom(32)
        sh = handshake_msg(
            2,
            b"\x03\x03" + server_random + _vec(ch.session_id, 1) + suite + b"\x00" + _vec(exts, 2),
        )
        cert = handshake_msg(11, _vec(b"".join(_vec(d, 3) for d in chain_der), 3))
        msgs = [sh, cert]
        if ending == "forged-key-exchange":
            pub = (
                x25519.X25519PrivateKey.generate()
                .public_key()
                .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            )
            params = b"\x03" + X25519.to_bytes(2, "big") + _vec(pub, 1)
            client_random = ch.msg[6:38]
            sig_alg = 0x0403 if scheme == 0x0403 else 0x0804
            sig = _forged_signature(sig_alg, client_random + server_random + params)
            msgs.append(handshake_msg(12, params + sig_alg.to_bytes(2, "big") + _vec(sig, 2)))
            if request_cert:
                msgs.append(handshake_msg(13, _vec(b"\x40\x01", 1) + SIG_ALGS + b"\x00\x00"))
            msgs.append(handshake_msg(14, b""))
        if ending == "rsa-key-transport":
            msgs.append(handshake_msg(14, b""))
        out = record(HANDSHAKE, b"".join(msgs))
        if ending == "alert":
            out += alert_record(40)
        conn.sendall(out)
        _drain(conn)

    return handle


def fake_alert(conn: socket.socket) -> None:
    """Answers a ClientHello with bytes shaped like a fatal unknown_ca alert."""
    conn.settimeout(5)
    conn.recv(65536)
    conn.sendall(alert_record(48))


def _drain(conn: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while conn.recv(65536):
            pass


# --- real TLS stacks that hold their key but accept foreign certificates ------------------


def openssl_server(
    issued: Issued,
    *,
    version: int,
    request_cert: bool,
    then: str = "serve",
) -> Callable[[socket.socket], None]:
    """A pyOpenSSL server. With ``request_cert`` it asks for a client certificate
    and accepts any; ``then``: serve | fin | close-notify | rst (each after reading
    the request) | banner (server speaks first) | fake-alert (alert-shaped bytes
    written outside TLS after the handshake)."""
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    ctx.use_certificate(issued.cert)  # type: ignore[arg-type]
    ctx.use_privatekey(issued.key)  # type: ignore[arg-type]  # stubs predate cryptography keys
    for extra in issued.chain[:-1]:
        ctx.add_extra_chain_cert(extra)  # type: ignore[arg-type]
    ctx.set_min_proto_version(version)
    ctx.set_max_proto_version(version)
    ctx.set_alpn_select_callback(lambda _c, offered: offered[0])
    if request_cert:
        ctx.set_verify(SSL.VERIFY_PEER, lambda *_: True)

    def handle(conn: socket.socket) -> None:
        conn.settimeout(None)  # pyOpenSSL wants a blocking socket; SO_RCVTIMEO bounds reads
        netio.set_io_timeout(conn, 5)
        server = SSL.Connection(ctx, conn)
        server.set_accept_state()
        try:
            server.do_handshake()
            if then == "banner":
                server.sendall(b"220 ready\r\n")
                read_request(server)  # type: ignore[arg-type]
                return
            if then == "fake-alert":
                conn.sendall(alert_record(48))
                _drain(conn)
                return
            read_request(server)  # type: ignore[arg-type]
            if then == "serve":
                server.sendall(HTTP_OK)
            elif then == "close-notify":
                server.shutdown()
            elif then == "rst":
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER0)
        except SSL.Error:
            return

    return handle
