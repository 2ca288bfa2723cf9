"""Signing keys for the evidence tests: a private key and its public key as PEM files."""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519


def write_key_pair(
    key: ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey, priv: Path, pub: Path
) -> bytes:
    """``key`` as unencrypted PKCS#8 PEM at ``priv`` and its public key at ``pub``;
    returns the private PEM."""
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    priv.write_bytes(pem)
    pub.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return pem
