"""DKIM signatures (RFC 6376; Ed25519-SHA256 from RFC 8463) on every message that leaves as raw
MIME (SMTP, the outbox, `preview --format eml`). SendGrid signs its own mail with the domain
authenticated in the account, so its requests carry no signature from here.

The signature covers From, To, Subject, Date, Message-ID, Reply-To, List-Id, List-Unsubscribe,
List-Unsubscribe-Post (RFC 8058 wants both inside it), Feedback-ID and the MIME headers, each
listed twice in h= ("oversigned": a header added on the way breaks the signature rather than
being believed), with c=relaxed/simple and never l= (a length limit lets anyone append text).

Cost per recipient: the body holds the reader's name and links from its first lines on, so its
hash (SHA-256, about 35 µs for 40 KB) is taken per message; what every recipient of a variant
shares — the canonical form of the shared headers, hashed once into a SHA-256 state that each
message copies, and the signature's fixed tags — is prepared once per variant (`prepare`). The
private-key operation is the real price: about 1 ms for RSA-2048, 60 µs for Ed25519 (OpenSSL
through `cryptography`; dkimpy's own RSA is pure Python, about 10 ms). dkimpy, the reference
implementation, verifies the first message of every variant against the public key before the
send goes on (`self_check`, called by digest.message), so a signature that would fail never
goes out by the thousand.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

import dkim as dkimpy
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa, utils

from digest.config import Config, DkimKeyConfig, NewsletterConfig
from digest.errors import ConfigError, DigestError

# Header fields the signature covers, when present; each is also signed once more than it
# occurs, so that none can be added after signing.
SIGNED = (
    "from",
    "reply-to",
    "to",
    "subject",
    "date",
    "message-id",
    "list-id",
    "list-unsubscribe",
    "list-unsubscribe-post",
    "feedback-id",
    "mime-version",
    "content-type",
)
MIN_RSA_BITS = 1024  # receivers ignore shorter keys (RFC 8301); 2048 is what they expect
_B64_LINE = 70


class DkimError(DigestError):
    """A signature could not be made or did not verify: nothing was sent with it."""


@dataclass(frozen=True)
class Key:
    selector: str
    algorithm: str  # "rsa-sha256" | "ed25519-sha256"
    private: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
    bits: int

    @property
    def kind(self) -> str:
        return "rsa" if self.algorithm == "rsa-sha256" else "ed25519"

    def public_key(self) -> str:
        """The p= value: base64 of the DER SubjectPublicKeyInfo (RSA) or of the raw 32-byte
        public key (Ed25519, RFC 8463)."""
        public = self.private.public_key()
        if isinstance(public, ed25519.Ed25519PublicKey):
            raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        else:
            raw = public.public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        return base64.b64encode(raw).decode("ascii")

    def record(self) -> str:
        """The TXT record to publish at <selector>._domainkey.<domain>."""
        return f"v=DKIM1; k={self.kind}; p={self.public_key()}"

    def sign(self, digest: bytes) -> bytes:
        """Sign the SHA-256 digest of the canonical headers."""
        if isinstance(self.private, ed25519.Ed25519PrivateKey):
            return self.private.sign(digest)  # RFC 8463: PureEdDSA over the SHA-256 hash
        return self.private.sign(digest, padding.PKCS1v15(), utils.Prehashed(hashes.SHA256()))


@lru_cache(maxsize=32)
def parse_key(selector: str, text: str, where: str) -> Key:
    """A PEM private key (RSA in PKCS#1 or PKCS#8, Ed25519 in PKCS#8), or the base64 Ed25519
    seed dkimpy's dknewkey writes. ConfigError naming `where` otherwise."""
    data = text.strip().encode("ascii", "replace")
    private: Any
    if data.startswith(b"-----BEGIN"):
        try:
            private = serialization.load_pem_private_key(data, password=None)
        except TypeError:
            raise ConfigError(
                f"{where}: the key is encrypted; give it without a passphrase"
            ) from None
        except (ValueError, UnsupportedAlgorithm) as e:
            raise ConfigError(f"{where}: not a readable PEM private key ({e})") from None
    else:
        try:
            seed = base64.b64decode(b"".join(data.split()), validate=True)
        except binascii.Error:
            seed = b""
        if len(seed) not in (32, 64):
            raise ConfigError(
                f"{where}: not a PEM private key (-----BEGIN PRIVATE KEY-----) nor a base64 "
                "Ed25519 seed"
            )
        private = ed25519.Ed25519PrivateKey.from_private_bytes(seed[:32])
    if isinstance(private, ed25519.Ed25519PrivateKey):
        return Key(selector, "ed25519-sha256", private, 256)
    if isinstance(private, rsa.RSAPrivateKey):
        if private.key_size < MIN_RSA_BITS:
            raise ConfigError(
                f"{where}: an RSA key of {private.key_size} bits is too short (receivers ignore "
                "keys under 1024 bits; use 2048)"
            )
        return Key(selector, "rsa-sha256", private, private.key_size)
    raise ConfigError(f"{where}: DKIM signs with RSA or Ed25519 keys, not {type(private).__name__}")


def load_key(key: DkimKeyConfig) -> Key:
    """Read (every time: a rotated file or variable is seen) and parse (once per text)."""
    return parse_key(key.selector, key.read(), f"dkim: selector {key.selector!r}: {key.source}")


def signing_domain(config: Config, newsletter: NewsletterConfig) -> str:
    return config.dkim.domain or newsletter.from_email.rpartition("@")[2].lower()


def signer_for(config: Config, newsletter: NewsletterConfig) -> Signer | None:
    """The newsletter's signer, or None when no key is configured. Keys are read once."""
    if not config.dkim.enabled:
        return None
    return Signer(signing_domain(config, newsletter), [load_key(k) for k in config.dkim.keys])


def _header_pairs(lines: Sequence[bytes]) -> list[tuple[bytes, bytes]]:
    """(name, value) of complete header lines as message.py writes them (CRLF-terminated,
    possibly folded; one or several headers per item)."""
    pairs: list[tuple[bytes, bytes]] = []
    for chunk in lines:
        for line in chunk.split(b"\r\n"):
            if not line:
                continue
            if line[:1] in (b" ", b"\t"):
                name, value = pairs[-1]
                pairs[-1] = (name, value + b"\r\n" + line)
            else:
                name, _, value = line.partition(b":")
                pairs.append((name, value))
    return pairs


_WSP = re.compile(rb"[ \t]+")
_SIGNED_BYTES = frozenset(n.encode() for n in SIGNED)


def relaxed(pairs: Sequence[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """RFC 6376 3.4.2 "relaxed" header canonicalisation, as dkimpy's Relaxed does it (a test
    holds them equal) without its per-call regular expressions: unfold, runs of spaces and
    tabs to one space, strip."""
    out = []
    for name, value in pairs:
        v = value.replace(b"\r\n", b"").replace(b"\n", b"")
        if b"\t" in v or b"  " in v:
            v = _WSP.sub(b" ", v)
        out.append((name.lower().rstrip(), v.strip() + b"\r\n"))
    return out


def _canonical(lines: Sequence[bytes]) -> tuple[list[bytes], bytes]:
    """(lower-case names, the relaxed canonical form to hash) of the signed headers among
    `lines`; others (X-Digest-*) are left out."""
    pairs = [(n, v) for n, v in _header_pairs(lines) if n.lower() in _SIGNED_BYTES]
    canonical = relaxed(pairs)
    return [n for n, _ in canonical], b"".join(n + b":" + v for n, v in canonical)


def _fold_b64(value: str, first: int) -> str:
    """A base64 value wrapped for a header: folding whitespace inside b= and bh= is allowed
    (RFC 6376 3.5), and the b= value is removed with it before hashing."""
    lines = [value[:first]]
    lines += [value[i : i + _B64_LINE] for i in range(first, len(value), _B64_LINE)]
    return "\r\n ".join(lines)


class Signer:
    """Signs with every configured key (RSA, and Ed25519 beside it if configured: receivers
    that know Ed25519 check that one, the others the RSA one)."""

    def __init__(self, domain: str, keys: Sequence[Key]) -> None:
        self.domain = domain
        self.keys = tuple(keys)

    def prepare(self, shared: Sequence[bytes], own_names: Sequence[str]) -> Prepared:
        """Per variant: `shared` are the header lines every recipient gets; `own_names` the
        headers each message adds (To, Subject, ...)."""
        return Prepared(self, shared, own_names)


class Prepared:
    """A signer bound to one variant's shared headers."""

    def __init__(self, signer: Signer, shared: Sequence[bytes], own_names: Sequence[str]) -> None:
        self.signer = signer
        names, canonical = _canonical(shared)
        own = [n.lower().encode() for n in own_names if n.lower() in SIGNED]
        listed = [*names, *own]
        # Shared headers first in h=: the hash of their canonical form is taken once here.
        # Each name twice, and the signed ones the message lacks (Reply-To, List-Unsubscribe
        # on a confirmation) and Cc once: an instance added later has nothing to pair with.
        absent = [n.encode() for n in (*SIGNED, "cc") if n.encode() not in listed]
        h = b":".join(listed + listed + absent).decode("ascii")
        self._state = hashlib.sha256(canonical)
        self._heads = [
            (
                key,
                f"v=1; a={key.algorithm}; c=relaxed/simple;",
                f"d={signer.domain}; s={key.selector};",
                _wrap_h(f"h={h};"),
            )
            for key in signer.keys
        ]
        self._own = own

    def sign(self, own: Sequence[bytes], body: bytes, timestamp: int) -> bytes:
        """DKIM-Signature header lines (one per key) for a message whose per-recipient headers
        are `own` (in any order, names as passed to prepare) and whose body is `body`."""
        names, canonical = _canonical(own)
        if names != self._own:
            raise DkimError(f"DKIM: headers {names} given where {self._own} were prepared")
        bh = base64.b64encode(hashlib.sha256(body).digest()).decode("ascii")
        out: list[bytes] = []
        for key, head, where, h in self._heads:
            # Folded at the spaces between tags: relaxed canonicalisation reads each fold as
            # the one space it replaces, so the hashed and the written header agree.
            parts = [head, f"{where} t={timestamp};", *h, f"bh={bh};", "b="]
            state = self._state.copy()
            state.update(canonical)
            state.update(b"dkim-signature:" + " ".join(parts).encode("ascii"))
            signature = base64.b64encode(key.sign(state.digest())).decode("ascii")
            header = "DKIM-Signature: " + "\r\n ".join(parts) + _fold_b64(signature, 60)
            out.append(header.encode("ascii") + b"\r\n")
        return b"".join(out)


def _wrap_h(h: str) -> list[str]:
    """h= in lines of at most 70 characters, broken after a colon (FWS is allowed there)."""
    lines: list[str] = []
    current = ""
    for name in h.split(":"):
        piece = name if not current else ":" + name
        if current and len(current) + len(piece) > _B64_LINE:
            lines.append(current + ":")
            current = name
        else:
            current += piece
    lines.append(current)
    return lines


class MessageSigning:
    """DKIM for the messages of one variant (digest.message): nothing when no key is
    configured. The keys are read at the first raw message (SendGrid requests need none), and
    that first signed message is verified with dkimpy before it is handed out."""

    def __init__(
        self,
        config: Config,
        newsletter: NewsletterConfig,
        shared: list[bytes],
        own_names: tuple[str, ...],
    ) -> None:
        self._args = (config, newsletter, shared, own_names)
        self._enabled = config.dkim.enabled
        self._prepared: Prepared | None = None

    def message(self, headers: list[bytes], own: list[bytes], body: bytes, when: datetime) -> bytes:
        """`headers` (`own` among them, the last ending with the blank line) and `body`, with
        the DKIM-Signature lines on top when signing."""
        if not self._enabled:
            return b"".join([*headers, body])
        prepared = self._prepared
        if prepared is None:
            config, newsletter, shared, own_names = self._args
            signer = signer_for(config, newsletter)
            assert signer is not None
            prepared = signer.prepare(shared, own_names)
            raw = b"".join([prepared.sign(own, body, int(when.timestamp())), *headers, body])
            self_check(signer, raw)
            self._prepared = prepared
            return raw
        return b"".join([prepared.sign(own, body, int(when.timestamp())), *headers, body])


def verify(message: bytes, records: dict[str, str]) -> list[bool]:
    """Verify every DKIM-Signature of `message` with dkimpy, looking the keys up in `records`
    (name → TXT value, e.g. {"s1._domainkey.example.com": "v=DKIM1; ..."}) instead of DNS."""

    def dnsfunc(name: bytes | str, timeout: int = 5) -> bytes | None:
        key = (name.decode() if isinstance(name, bytes) else name).rstrip(".")
        value = records.get(key)
        return value.encode() if value is not None else None

    d = dkimpy.DKIM(message)
    n = sum(1 for name, _ in d.headers if name.lower() == b"dkim-signature")
    results = []
    for i in range(n):
        try:
            results.append(bool(d.verify(idx=i, dnsfunc=dnsfunc)))
        except dkimpy.DKIMException:  # a body hash mismatch, a malformed tag: a failure
            results.append(False)
    return results


def self_check(signer: Signer, message: bytes) -> None:
    """Verify a freshly signed message with dkimpy against the signer's own public keys;
    DkimError when any signature fails (a canonicalisation bug must not go out unnoticed)."""
    records = {f"{k.selector}._domainkey.{signer.domain}": k.record() for k in signer.keys}
    results = verify(message, records)
    if len(results) != len(signer.keys) or not all(results):
        failed = [k.selector for k, ok in zip(signer.keys, results, strict=False) if not ok]
        raise DkimError(
            f"DKIM self-check failed for selector(s) {', '.join(failed) or '?'}: the signature "
            "does not verify; nothing was sent with it"
        )
