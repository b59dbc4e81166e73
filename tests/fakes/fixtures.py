"""pytest fixtures over the fakes; import them into a test module to use them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakes.sendgrid import API_KEY, SendGridStandIn
from tests.fakes.smtp import SmtpServer, make_certificate


@pytest.fixture(scope="session")
def tls_cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_certificate(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def smtp_server(
    tls_cert: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> Iterator[SmtpServer]:
    """STARTTLS + AUTH server; the client trusts its certificate through SSL_CERT_FILE."""
    monkeypatch.setenv("SSL_CERT_FILE", str(tls_cert[0]))
    monkeypatch.setenv("DIGEST_SMTP_PASSWORD", "s3cret-pass")
    with SmtpServer(*tls_cert) as server:
        yield server


@pytest.fixture
def sendgrid_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[SendGridStandIn]:
    monkeypatch.setenv("SENDGRID_API_KEY", API_KEY)
    with SendGridStandIn() as server:
        yield server
