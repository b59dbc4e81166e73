"""A real SMTP server (aiosmtpd) on 127.0.0.1 with STARTTLS and AUTH, for tests and benchmarks.

The TLS certificate is self-signed and generated per session; clients trust it through
SSL_CERT_FILE (OpenSSL's default verify paths read it), so digest needs no test-only option.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import random
import socket
import ssl
import threading
from collections import Counter
from collections.abc import Callable
from email import message_from_bytes, message_from_string, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

USERNAME = "digest"
PASSWORD = "s3cret-pass"


def make_certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost; returns (cert, key) paths."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "digest test SMTP")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "smtp-cert.pem", folder / "smtp-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Handler:
    def __init__(self, server: SmtpServer) -> None:
        self.server = server

    async def handle_MAIL(
        self, smtp: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        s = self.server
        with s.lock:
            s.mails += 1
            s.senders.append(address)
            drop = s.mails in s.drop_at_mail
        if drop:
            smtp.transport.close()  # the connection drops, as a restarting server's would
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(
        self, smtp: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        refuse = self.server.refuse.get(address.lower())
        if refuse:
            return refuse
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, smtp: Any, session: Any, envelope: Any) -> str:
        s = self.server
        if s.delay:
            with s.lock:
                s.busy += 1
                s.most_busy = max(s.most_busy, s.busy)
            await asyncio.sleep(s.delay)  # a distant or busy relay; other sessions go on
            with s.lock:
                s.busy -= 1
        with s.lock:
            if s.fail_rate and s.random.random() < s.fail_rate:
                return "451 4.3.0 stand-in temporary failure"
            s.received.append((list(envelope.rcpt_tos), bytes(envelope.content) if s.keep else b""))
            n = len(s.received)
        if s.on_message is not None:
            s.on_message(n)
        return f"250 2.0.0 Ok: queued as Q{n:07d}"


class SmtpServer:
    """`with SmtpServer(cert, key) as smtp:`; STARTTLS required before AUTH when `auth`."""

    def __init__(
        self,
        cert: Path | None = None,
        key: Path | None = None,
        *,
        auth: bool = True,
        keep: bool = True,
        implicit_tls: bool = False,
        smtputf8: bool = True,
    ) -> None:
        self.port = free_port()
        self.keep = keep  # False: remember recipients only (big sends)
        self.received: list[tuple[list[str], bytes]] = []
        self.refuse: dict[str, str] = {}  # address -> SMTP reply to RCPT
        self.fail_rate = 0.0
        self.delay = 0.0  # seconds before each DATA reply
        self.busy = self.most_busy = 0  # messages being answered at once (with a delay)
        self.random = random.Random(7)
        self.on_message: Callable[[int], None] | None = None
        self.lock = threading.Lock()
        self.logins: list[str] = []
        self.mails = 0
        self.senders: list[str] = []  # MAIL FROM addresses, in order
        self.drop_at_mail: set[int] = set()  # MAIL FROM numbers at which to drop the connection
        # SMTPUTF8 (RFC 6531) offered as most modern servers do; False: one that does not.
        kwargs: dict[str, Any] = {"enable_SMTPUTF8": smtputf8}
        if cert is not None and key is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(cert, key)
            if implicit_tls:
                kwargs["ssl_context"] = context
            else:
                kwargs["tls_context"] = context
                kwargs["require_starttls"] = auth
        if auth:
            kwargs["authenticator"] = self._authenticate
            kwargs["auth_required"] = True
            # aiosmtpd counts only STARTTLS as TLS; an implicit-TLS connection is TLS already.
            kwargs["auth_require_tls"] = cert is not None and not implicit_tls
        self.controller = Controller(
            Handler(self), hostname="127.0.0.1", port=self.port, ready_timeout=10, **kwargs
        )

    def _authenticate(
        self, server: Any, session: Any, envelope: Any, mechanism: str, data: Any
    ) -> AuthResult:
        ok = (
            isinstance(data, LoginPassword)
            and data.login.decode() == USERNAME
            and data.password.decode() == PASSWORD
        )
        if ok:
            self.logins.append(mechanism)
        return AuthResult(success=ok, handled=False)

    def __enter__(self) -> SmtpServer:
        self.controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.controller.stop()

    def messages(self) -> list[EmailMessage]:
        out = []
        for _, raw in self.received:
            # A message to a non-ASCII mailbox has UTF-8 headers (RFC 6532): read as text.
            msg = (
                message_from_bytes(raw, policy=policy.default)
                if raw.isascii()
                else message_from_string(raw.decode("utf-8"), policy=policy.default)
            )
            assert isinstance(msg, EmailMessage)
            out.append(msg)
        return out

    def counts(self) -> Counter[str]:
        """Messages received per recipient address."""
        c: Counter[str] = Counter()
        for rcpts, _ in self.received:
            for r in rcpts:
                c[r.lower()] += 1
        return c
