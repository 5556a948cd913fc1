"""Certificate signatures: an Ed25519 key per workspace signs the canonical JSON of a certificate, so anyone holding
only the certificate file can tell whether it was changed since it was signed, and with which public key.

The canonical form is the certificate without its ``signature`` block, serialised with sorted keys, no whitespace
and UTF-8 (``json.dumps(cert, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()``); the block
holds the algorithm, the raw 32-byte public key and the 64-byte signature, both in base64.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ..workspace import Workspace

SIGNATURE = "signature"
"""The certificate key holding the signature block (the one key the signature does not cover)."""
ALGORITHM = "ed25519"
SIGNED = "canonical JSON of every key but 'signature'"
"""What the signature covers, as the block states it."""


def canonical(cert: dict[str, Any]) -> bytes:
    """The bytes a certificate's signature covers: every key but ``signature``, sorted, compact, UTF-8."""
    body = {k: v for k, v in cert.items() if k != SIGNATURE}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def load_or_create_key(ws: Workspace) -> Ed25519PrivateKey:
    """The workspace's signing key (``.disgorge/signing.key``), created on first use in older workspaces."""
    return Ed25519PrivateKey.from_private_bytes(ws.signing_key())


def workspace_public_key(ws: Workspace) -> str | None:
    """The base64 raw public key of the workspace's signing key, or None when it has none (nothing is created)."""
    if not ws.signing_key_path.exists():
        return None
    return public_key_b64(Ed25519PrivateKey.from_private_bytes(ws.signing_key()))


def public_key_b64(private_key: Ed25519PrivateKey) -> str:
    """The raw 32-byte public key of ``private_key`` in base64."""
    raw = private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return base64.b64encode(raw).decode("ascii")


def sign(cert: dict[str, Any], private_key: Ed25519PrivateKey) -> dict[str, str]:
    """The signature block for ``cert`` (Ed25519 is deterministic: the same content and key give the same block)."""
    value = private_key.sign(canonical(cert))
    return {"algorithm": ALGORITHM, "public_key": public_key_b64(private_key),
            "value": base64.b64encode(value).decode("ascii"), "signed": SIGNED}


def signature_problem(cert: dict[str, Any]) -> str | None:
    """Why ``cert``'s signature does not verify with the public key it names, or None when it does."""
    block = cert.get(SIGNATURE)
    if not isinstance(block, dict):
        return "the certificate carries no signature block"
    if block.get("algorithm") != ALGORITHM:
        return f"unknown signature algorithm {block.get('algorithm')!r} (expected {ALGORITHM!r})"
    try:
        public = Ed25519PublicKey.from_public_bytes(_b64(block.get("public_key")))
        value = _b64(block.get("value"))
    except (ValueError, TypeError, binascii.Error):
        return "the signature block's public key or value is not valid base64 of the right length"
    try:
        public.verify(value, canonical(cert))
    except (TypeError, ValueError):  # content JSON cannot encode (a lone surrogate, a non-string key)
        return "the certificate's content cannot be put in canonical form, so it cannot be what was signed"
    except InvalidSignature:
        return "the signature does not match the content: the certificate was changed after it was signed"
    return None


def verify_signature(cert: dict[str, Any]) -> bool:
    """Whether ``cert``'s signature verifies, with the public key it names, over its canonical JSON."""
    return signature_problem(cert) is None


def _b64(text: Any) -> bytes:
    if not isinstance(text, str):
        raise TypeError("not a string")
    return base64.b64decode(text.encode("ascii"), validate=True)


def same_certificate(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two certificates say the same thing (their signature blocks aside), compared as canonical JSON."""
    return canonical(a) == canonical(b)
