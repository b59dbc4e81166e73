"""DKIM keys for tests: fresh RSA and Ed25519 keys, a config that signs with them, and the DNS
records a receiver would look them up in (a stub for dkimpy's dnsfunc)."""

from __future__ import annotations

import base64
import dataclasses
from functools import lru_cache
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from digest.config import Config, DkimConfig, DkimKeyConfig
from digest.dkim import load_key, parse_key

RSA_SELECTOR = "test-rsa"
ED_SELECTOR = "test-ed"
ED_ENV = "DIGEST_TEST_DKIM_ED25519"


@lru_cache(maxsize=4)
def rsa_pem(bits: int = 2048) -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,  # PKCS#1, as `openssl genrsa` writes
        serialization.NoEncryption(),
    )


@lru_cache(maxsize=1)
def ed25519_seed_b64() -> str:
    """The form dkimpy's dknewkey writes for Ed25519: base64 of the 32-byte seed."""
    key = ed25519.Ed25519PrivateKey.generate()
    raw = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    return base64.b64encode(raw).decode()


def signing_config(
    config: Config, folder: Path, *, rsa_key: bool = True, ed_key: bool = True
) -> Config:
    """`config` signing with an RSA key from a file and/or an Ed25519 key from $ED_ENV (the
    caller sets the variable: monkeypatch.setenv(ED_ENV, ed25519_seed_b64()))."""
    keys = []
    if rsa_key:
        path = folder / "dkim-rsa.pem"
        path.write_bytes(rsa_pem())
        keys.append(DkimKeyConfig(selector=RSA_SELECTOR, key_file=path))
    if ed_key:
        keys.append(DkimKeyConfig(selector=ED_SELECTOR, key_env=ED_ENV))
    return dataclasses.replace(config, dkim=DkimConfig(keys=tuple(keys)))


def dns_records(config: Config, domain: str = "news.example") -> dict[str, str]:
    """What the newsroom publishes: <selector>._domainkey.<domain> → the key's TXT value."""
    return {
        f"{k.selector}._domainkey.{config.dkim.domain or domain}": load_key(k).record()
        for k in config.dkim.keys
    }


def record_of(selector: str, text: str) -> str:
    return parse_key(selector, text, "test").record()
