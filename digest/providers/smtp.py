"""SMTP provider: connections reused for many messages, STARTTLS or implicit TLS, AUTH.

`connections` delivery threads each keep one connection: every message costs the sender four
round trips (MAIL, RCPT, DATA, the message; smtplib does not pipeline), so against a relay 50 ms
away one connection manages about 5 messages a second, and several connections multiply that.

Each message is its own SMTP transaction (MAIL, RCPT, DATA), so one refused recipient never
stops the others. The checkpoint is called after the message body and before the final dot:
from the dot on, the server may have the message. A temporary answer to RCPT, DATA or the
message (450 greylisted, 452 mailbox full, 451 after the dot) defers that recipient alone; 421,
a temporary answer to MAIL and a lost connection are the server's trouble and retried with
backoff; a message that cannot be built for its recipient fails alone. Every refusal is passed
to a checkpoint before the next command.
"""

from __future__ import annotations

import contextlib
import re
import smtplib
import socket
import ssl
import threading
from collections.abc import Callable, Sequence

from digest.config import SmtpConfig
from digest.message import wire_address
from digest.providers.base import (
    BUILD_ERRORS,
    Batch,
    Checkpoint,
    Closing,
    Kind,
    Outcome,
    RateLimiter,
    unbuildable,
)

NO_SMTPUTF8 = "server does not offer SMTPUTF8; cannot deliver to a non-ASCII mailbox"

# Postfix/Exim/aiosmtpd "queued as X", Sendmail-style "id=X"; otherwise the whole reply is kept.
_QUEUE_ID = re.compile(r"(?:queued as\s+|\bid=)<?([\w.@:-]+)", re.IGNORECASE)


class _Connection(smtplib.SMTP):
    def data_with_mark(
        self,
        message: bytes,
        mark: Checkpoint,
        delivery_id: int,
        meanwhile: Callable[[], None] = lambda: None,
    ) -> tuple[int, str]:
        """smtplib.SMTP.data, with the checkpoint just before the final dot and `meanwhile`
        run while the server takes in the message (before its reply is read). A refusal of
        the DATA command itself is returned, not raised."""
        code, reply = self.docmd("data")
        if code != 354:
            # Refused before the message: nothing was handed over (the caller sees no mark).
            return code, reply.decode("utf-8", "replace")
        # Dot-stuffing (RFC 5321 4.5.2): a bytes replace is four times faster than the regex
        # it replaces on a 40 KB message.
        body = message.replace(b"\n.", b"\n..")
        if body.startswith(b"."):
            body = b"." + body
        if not body.endswith(b"\r\n"):
            body += b"\r\n"
        self.send(body)
        # Recorded before the final dot: until the server has the dot it discards the message,
        # so a crash from here on can at worst leave an `unknown` that was not delivered —
        # never a delivered message the ledger would send again.
        mark([delivery_id], [])
        self.send(b".\r\n")
        meanwhile()
        code, text = self.getreply()
        return code, text.decode("utf-8", "replace")


class _SSLConnection(smtplib.SMTP_SSL, _Connection):
    pass


def _build_ahead(batch: Batch, i: int, ahead: dict[int, bytes]) -> None:
    if i < len(batch.messages):
        # A message that cannot be built fails in its own turn, not in its predecessor's.
        with contextlib.suppress(Exception):
            ahead[i] = batch.mime(i)


def _utf8_options(conn: smtplib.SMTP) -> list[str] | None:
    """MAIL FROM parameters for a non-ASCII mailbox (RFC 6531), as smtplib.send_message
    chooses them; None when the server cannot take one."""
    if not conn.has_extn("smtputf8"):
        return None
    return ["SMTPUTF8", "BODY=8BITMIME"] if conn.has_extn("8bitmime") else ["SMTPUTF8"]


def _refusal(delivery_id: int, code: int, text: str | bytes, *, recipient: bool) -> Outcome:
    """What an SMTP refusal means. `recipient`: the answer was to RCPT, DATA or the message,
    so a temporary one (greylisting, mailbox full, 451 after the message) concerns this
    recipient alone: DEFER, and the send goes on. 421 (the server is closing the connection)
    and a temporary answer to MAIL concern every message: RETRY, with backoff."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    error = f"SMTP {code} {text}".strip()
    if code in (530, 534, 535, 538):
        return Outcome(delivery_id, Kind.AUTH, error=error)
    if 400 <= code < 500:
        kind = Kind.DEFER if recipient and code != 421 else Kind.RETRY
        return Outcome(delivery_id, kind, error=error)
    return Outcome(delivery_id, Kind.FAILED, error=error)


class SmtpProvider(Closing):
    name = "smtp"
    batch_size = 100

    def __init__(self, config: SmtpConfig, envelope_from: str) -> None:
        self.config = config
        self.envelope_from = envelope_from
        self.limiter = RateLimiter(config.rate)  # shared by the connections
        # A batch per connection at once; a connection belongs to the thread that opened it.
        self.in_flight = config.connections
        self._local = threading.local()
        self._open: set[_Connection] = set()
        self._lock = threading.Lock()

    @property
    def _conn(self) -> _Connection | None:
        conn: _Connection | None = getattr(self._local, "conn", None)
        return conn if conn in self._open else None  # close() may have quit it meanwhile

    @_conn.setter
    def _conn(self, conn: _Connection | None) -> None:
        self._local.conn = conn

    def _connect(self) -> _Connection:
        c = self.config
        context = ssl.create_default_context()
        conn: _Connection
        if c.security == "tls":
            conn = _SSLConnection(c.host, c.port, timeout=c.timeout, context=context)
        else:
            conn = _Connection(c.host, c.port, timeout=c.timeout)
            if c.security == "starttls":
                conn.starttls(context=context)
        # Each message is a few small writes answered by small reads; with Nagle's algorithm on,
        # the final dot waits for a delayed ACK (~40 ms a message on Linux).
        if conn.sock is not None:
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.ehlo_or_helo_if_needed()
        if c.username:
            conn.login(c.username, c.password or "")
        return conn

    def send(self, batch: Batch, checkpoint: Checkpoint) -> list[Outcome]:
        outcomes: list[Outcome] = []
        pending: list[Outcome] = []  # known outcomes not yet passed to a checkpoint

        def mark(handed: Sequence[int], settled: Sequence[Outcome]) -> None:
            checkpoint(handed, [*pending, *settled])
            pending.clear()

        ahead: dict[int, bytes] = {}
        for i in range(len(batch.messages)):
            self.limiter.take()
            outcome = self._send_one(batch, i, mark, ahead, reconnect=True)
            outcomes.append(outcome)
            pending.append(outcome)
            if outcome.kind is not Kind.ACCEPTED:
                # A refusal is recorded before the next command: a crash must not leave a
                # message the server refused looking handed over (`unknown`). An acceptance
                # rides with the next message's checkpoint (one commit a message).
                mark([], [])
            if outcome.kind is Kind.AUTH:
                outcomes += [
                    Outcome(r.delivery_id, Kind.AUTH, error=outcome.error)
                    for r in batch.messages[i + 1 :]
                ]
                break
            if outcome.kind is Kind.RETRY and self._conn is None:
                # The server is unreachable: the rest of the batch waits for the backoff.
                outcomes += [
                    Outcome(r.delivery_id, Kind.RETRY, error=outcome.error)
                    for r in batch.messages[i + 1 :]
                ]
                break
        return outcomes

    def _send_one(
        self, batch: Batch, i: int, mark: Checkpoint, ahead: dict[int, bytes], *, reconnect: bool
    ) -> Outcome:
        m = batch.messages[i]
        rid = m.delivery_id
        handed = False

        def mark_handed(ids: Sequence[int], settled: Sequence[Outcome]) -> None:
            nonlocal handed
            handed = True
            mark(ids, settled)

        try:
            message = ahead.pop(i, None) or batch.mime(i)
            rcpt = wire_address(m.to.email)
        except BUILD_ERRORS as e:  # an address or header that cannot be encoded
            return unbuildable(rid, e)
        try:
            conn = self._conn
            if conn is None:
                conn = self._conn = self._connect()
                with self._lock:
                    self._open.add(conn)
            options = _utf8_options(conn) if not rcpt.isascii() else []
            if options is None:
                return Outcome(rid, Kind.FAILED, error=NO_SMTPUTF8)
            try:
                code, reply = conn.mail(batch.envelope_sender(i) or self.envelope_from, options)
                if code == 250:
                    code, reply = conn.rcpt(rcpt)
                    recipient = True
                else:
                    recipient = False
            except BUILD_ERRORS as e:  # an address smtplib cannot encode: nothing was sent
                conn.rset()
                return unbuildable(rid, e)
            if code not in (250, 251):
                return self._refused(conn, rid, code, reply, recipient=recipient)
            # The next message is built (and DKIM-signed: about 1 ms with RSA) while the server
            # takes this one in, rather than after its reply.
            code, text = conn.data_with_mark(
                message, mark_handed, rid, lambda: _build_ahead(batch, i + 1, ahead)
            )
            if code != 250:
                if not handed:  # DATA itself refused: the transaction is still open
                    return self._refused(conn, rid, code, text, recipient=True)
                if code == 421:
                    self._drop()
                return _refusal(rid, code, text, recipient=True)
            found = _QUEUE_ID.search(text)
            return Outcome(rid, Kind.ACCEPTED, provider_id=found.group(1) if found else text[:200])
        except smtplib.SMTPAuthenticationError as e:
            self._drop()
            return _refusal(rid, e.smtp_code, e.smtp_error, recipient=False)
        except smtplib.SMTPNotSupportedError as e:
            self._drop()
            return Outcome(rid, Kind.AUTH, error=f"SMTP server {self.config.host}: {e}")
        except smtplib.SMTPResponseException as e:
            self._drop()
            if handed:
                return Outcome(rid, Kind.UNKNOWN, error=f"SMTP {e.smtp_code} after the message")
            return _refusal(rid, e.smtp_code, e.smtp_error, recipient=False)
        except (smtplib.SMTPException, OSError) as e:
            self._drop()
            if handed:
                # The final dot went out; whether the server kept the message is unknowable.
                return Outcome(rid, Kind.UNKNOWN, error=f"connection lost after the message: {e}")
            if reconnect:
                return self._send_one(batch, i, mark, ahead, reconnect=False)
            where = f"{self.config.host}:{self.config.port}"
            return Outcome(rid, Kind.RETRY, error=f"SMTP server {where}: {e or type(e).__name__}")

    def _refused(
        self, conn: _Connection, rid: int, code: int, reply: bytes | str, *, recipient: bool
    ) -> Outcome:
        """A refusal before the message: end the transaction (or the connection, on 421)."""
        if code == 421:
            self._drop()
        else:
            conn.rset()
        return _refusal(rid, code, reply, recipient=recipient)

    def _drop(self) -> None:
        conn = self._conn
        if conn is not None:
            self._conn = None
            with self._lock:
                self._open.discard(conn)
            conn.close()

    def close(self) -> None:
        """Quit every connection (called once the delivery threads are done)."""
        with self._lock:
            open_, self._open = list(self._open), set()
        for conn in open_:
            with contextlib.suppress(smtplib.SMTPException, OSError):
                conn.quit()
            conn.close()
