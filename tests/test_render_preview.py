"""`digest preview` and the preview server: the stored edition as a given reader gets it."""

from __future__ import annotations

import urllib.request
from datetime import datetime
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy.orm import Session, sessionmaker

from digest.config import Config
from digest.preview import PreviewServer, preview_mail, render_preview
from digest.render import Renderer, personal_links, personalise
from digest_cli import cli
from subscribers.audience import recipient
from subscribers.service import add_subscriber
from subscribers.tokens import read_token
from tests.render_support import EDITION_DATE, STORIES, store_edition


def _run(config_path: Path, db_url: str, *args: str) -> Result:
    return CliRunner().invoke(
        cli, ["--config", str(config_path), *args], env={"DIGEST_DATABASE_URL": db_url}
    )


@pytest.fixture
def stored(sessions: sessionmaker[Session], config: Config, now: datetime) -> None:
    nl = config.newsletter("daily")
    with sessions() as session:
        store_edition(session)
        add_subscriber(session, nl, "ana@example.com", at=now, name="Ana Costa")
        add_subscriber(
            session,
            nl,
            "vip@example.com",
            at=now,
            name="Vera",
            tags=["vip"],
            sections=["Health", "News"],
        )
        session.commit()


def test_subscriber_preview_is_what_the_send_builds(
    stored: None, session: Session, config: Config
) -> None:
    nl = config.newsletter("daily")
    mail = preview_mail(session, config, nl, EDITION_DATE, subscriber="vip@example.com")
    who = recipient(session, config, nl, "vip@example.com")
    edition = mail.edition
    expected = personalise(
        Renderer(config, nl, edition).variant(who.sections),
        personal_links(config, nl, edition, who),
    )
    assert (mail.mail.html, mail.mail.text, mail.mail.subject) == (
        expected.html,
        expected.text,
        expected.subject,
    )
    assert mail.variant.sections == ("Health", "News")
    assert "Good morning, Vera." in mail.mail.text
    token = mail.mail.text.split("https://news.example/u/", 1)[1].split("\n", 1)[0]
    assert read_token("test-secret-key", token, "unsubscribe").subscriber_id == who.subscriber_id


def test_cli_prints_text_and_writes_html(
    stored: None, config_path: Path, db_url: str, tmp_path: Path
) -> None:
    result = _run(
        config_path, db_url, "preview", "daily", "--date", "2026-03-10", "--format", "text"
    )
    assert result.exit_code == 0, result.output
    assert result.output.startswith("THE TEST GAZETTE\nTuesday, March 10, 2026")
    assert "Good morning, reader." in result.output
    for _, title, *_ in STORIES:
        assert title in result.output

    out = tmp_path / "vip.html"
    result = _run(
        config_path,
        db_url,
        "preview",
        "daily",
        "--date",
        "2026-03-10",
        "--segment",
        "vip",
        "-o",
        str(out),
    )
    assert result.exit_code == 0, result.output
    html = out.read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>") and "Good morning, Vera." in html
    assert html.index(">Health</h2>") < html.index(">News</h2>")


def test_cli_errors_are_one_line(stored: None, config_path: Path, db_url: str) -> None:
    result = _run(config_path, db_url, "preview", "daily", "--date", "2026-03-11")
    assert result.exit_code == 1
    assert result.output == (
        "Error: no edition of daily for 2026-03-11: "
        "run `digest edition build daily --date 2026-03-11`\n"
    )
    result = _run(
        config_path,
        db_url,
        "preview",
        "daily",
        "--date",
        "2026-03-10",
        "--subscriber",
        "nobody@example.com",
    )
    assert result.exit_code == 1 and result.output.startswith("Error: no subscriber")
    result = _run(
        config_path, db_url, "preview", "daily", "--date", "2026-03-10", "--format", "pdf"
    )
    assert result.exit_code == 1
    assert "unknown preview format 'pdf' (choose from eml, html, text)" in result.output


def test_server_lists_variants_and_rerenders_on_reload(
    stored: None, sessions: sessionmaker[Session], config: Config, tmp_path: Path
) -> None:
    import dataclasses

    custom = dataclasses.replace(config, templates_dir=tmp_path)
    server = PreviewServer(custom, sessions, config.newsletter("daily"), EDITION_DATE, port=0)
    server.start()
    try:

        def get(path: str) -> str:
            with urllib.request.urlopen(server.url.rstrip("/") + path, timeout=10) as r:
                return str(r.read().decode("utf-8"))

        index = get("/")
        assert "Health, News" in index and "News, Business, Health, Entertainment" in index
        assert "/html?s=Health&amp;s=News" in index or "/html?s=Health&s=News" in index
        assert "Good morning, reader." in get("/text?s=Health&s=News")
        assert "Unsubscribe" not in get("/html?archive=1")
        assert "Good morning, Vera." in get("/html?subscriber=vip@example.com")

        (tmp_path / "digest.txt").write_text("edited {{ newsletter.title }}\n", encoding="utf-8")
        assert get("/text") == "edited The Test Gazette\n"
        (tmp_path / "digest.txt").write_text("edited again\n", encoding="utf-8")
        assert get("/text") == "edited again\n"
        with pytest.raises(urllib.error.HTTPError) as err:
            get("/nope")
        assert err.value.code == 404
    finally:
        server.close()


def test_preview_formats_are_extensible(stored: None, session: Session, config: Config) -> None:
    from digest import preview

    mail = preview_mail(session, config, config.newsletter("daily"), EDITION_DATE)
    preview.register_format("subject", lambda p: p.mail.subject + "\n")
    try:
        assert render_preview(mail, "subject").startswith("The Test Gazette: City council")
    finally:
        del preview.FORMATS["subject"]
