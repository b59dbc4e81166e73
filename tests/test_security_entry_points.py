"""Every door text comes in by cleans or refuses control characters, naming the row or field:
CSV import, `subscribers add` / `subscribe`, the sign-up form, the preferences page, ingest
flags and the config file. (The message builder refuses them too: test_security_headers.)"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from flask.testing import FlaskClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from digest.clock import fixed
from digest.config import Config, load_config
from digest.confirmations import deliver_sign_ups
from digest.errors import ConfigError
from digest.web import create_app
from digest_cli import cli
from subscribers.models import Attribute, Subscriber
from tests.confirm_support import csrf_of, opt_in
from tests.web_support import add_reader, token, unlimited

INJECTION = "Friend\r\nBcc: victim@evil.example\r\nX-Injected: 1\r\n\r\nforged body"
DATA = Path(__file__).parent / "data"


@pytest.fixture
def run(db_url: str, config_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("DIGEST_DATABASE_URL", db_url)
    monkeypatch.setenv("DIGEST_CONFIG", str(config_path))

    def invoke(*args: str) -> Result:
        return CliRunner().invoke(cli, list(args))

    return invoke


def names(sessions: sessionmaker[Session]) -> dict[str, str | None]:
    with sessions() as s:
        return {e: n for e, n in s.execute(select(Subscriber.email, Subscriber.name))}


# --- CSV import ------------------------------------------------------------------------------


def test_import_rejects_rows_with_line_breaks_or_control_characters_naming_row_and_column(
    run, sessions: sessionmaker[Session], tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    csv = tmp_path / "people.csv"
    rows = [
        "email,name,region",
        "ok@example.com,Olive,Tampa",
        f'crlf@example.com,"{INJECTION}",Tampa',
        'lf@example.com,"Bare\nLF",Tampa',
        'cr@example.com,"Bare\rCR",Tampa',
        "esc@example.com,Ann,Tampa\x1b[31m",
    ]
    csv.write_bytes("\r\n".join(rows).encode("utf-8") + b"\r\n")
    result = run("subscribers", "import", str(csv), "-n", "daily")
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines() == [
        f"rejected: {csv}: row 3: name contains the control character U+000D (CARRIAGE RETURN)",
        f"rejected: {csv}: row 4: name contains the control character U+000A (LINE FEED)",
        f"rejected: {csv}: row 5: name contains the control character U+000D (CARRIAGE RETURN)",
        f"rejected: {csv}: row 6: region contains the control character U+001B (ESCAPE)",
    ]
    assert names(sessions) == {"ok@example.com": "Olive"}


def test_a_nul_byte_after_the_first_8_kb_rejects_its_row_on_every_backend(
    run, sessions: sessionmaker[Session], tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    csv = tmp_path / "big.csv"
    lines = ["email,name"] + [f"u{i}@example.com,Name {i}" for i in range(400)]
    lines.append("nul@example.com,ab\x00cd")
    csv.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert csv.stat().st_size > 8192
    result = run("subscribers", "import", str(csv), "-n", "daily")
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    assert result.stderr.strip() == (
        f"rejected: {csv}: row 402: name contains the control character U+0000 (NUL)"
    )
    stored = names(sessions)
    assert len(stored) == 400 and "nul@example.com" not in stored


# --- subscribers add / subscribe ---------------------------------------------------------------


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--name", INJECTION], "name contains the control character U+000D (CARRIAGE RETURN)"),
        (["--name", "Bare\nLF"], "name contains the control character U+000A (LINE FEED)"),
        (["--attr", "region=Tampa\r\nX: 1"], "attribute region contains the control character"),
        (["--attr", "re\ngion=Tampa"], "attribute name contains the control character"),
        (["--tag", "vip\x00"], "tag contains the control character U+0000 (NUL)"),
        (["--name", "N" * 301], "name is longer than 300 characters"),
    ],
)
def test_add_refuses_control_characters_in_names_attributes_and_tags(
    run, sessions: sessionmaker[Session], flags: list[str], message: str
) -> None:  # type: ignore[no-untyped-def]
    result = run("subscribers", "add", "ann@example.com", "-n", "daily", *flags)
    assert result.exit_code == 1
    assert result.stderr.strip().startswith(f"Error: {message}")
    assert names(sessions) == {}
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(Attribute)) == 0


def test_subscribe_refuses_a_name_with_a_line_break(run, sessions: sessionmaker[Session]) -> None:  # type: ignore[no-untyped-def]
    result = run("subscribers", "subscribe", "ann@example.com", "-n", "daily", "--name", INJECTION)
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        "Error: name contains the control character U+000D (CARRIAGE RETURN)"
    )
    assert names(sessions) == {}


# --- the web forms -------------------------------------------------------------------------------


@pytest.fixture
def client(
    config: Config, sessions: sessionmaker[Session], now: datetime, tmp_path: Path
) -> FlaskClient:
    cfg = opt_in(config, tmp_path / "outbox")
    return create_app(unlimited(cfg), sessions, clock=fixed(now)).test_client()


def test_the_sign_up_form_stores_a_hostile_name_cleaned(
    client: FlaskClient,
    config: Config,
    sessions: sessionmaker[Session],
    now: datetime,
    tmp_path: Path,
) -> None:
    page = client.get("/subscribe/daily").get_data(as_text=True)
    form = {"csrf": csrf_of(page), "email": "nia@example.com", "name": INJECTION + "\x00\u202e"}
    assert client.post("/subscribe/daily", data=form).status_code == 200
    deliver_sign_ups(opt_in(config, tmp_path / "outbox"), sessions, clock=fixed(now))
    assert names(sessions) == {
        "nia@example.com": "Friend Bcc: victim@evil.example X-Injected: 1 forged body"
    }


def test_the_preferences_page_stores_nothing_but_configured_section_names(
    client: FlaskClient, config: Config, sessions: sessionmaker[Session], now: datetime
) -> None:
    ann = add_reader(sessions, config, "ann@example.com", now)
    path = f"/p/{token(ann, 'preferences')}"
    page = client.get(path).get_data(as_text=True)
    order = ["News", "Business", "Health", "Entertainment"]
    for bad in ("News\r\nX-Injected: 1", "News\x00"):
        form = {"csrf": csrf_of(page), "order": [*order[:-1], bad], "section": [bad]}
        r = client.post(path, data=form)
        assert r.status_code == 400 and "Nothing was saved" in r.get_data(as_text=True)
    form = {"csrf": csrf_of(page), "order": order, "section": ["News\r\n"]}
    assert client.post(path, data=form).status_code == 400
    with sessions() as s:
        from subscribers.models import SectionPreference

        assert s.scalars(select(SectionPreference.section)).all() == []


# --- ingest flags ----------------------------------------------------------------------------------


def test_ingest_refuses_a_source_or_section_flag_with_a_line_break(
    run, sessions: sessionmaker[Session]
) -> None:  # type: ignore[no-untyped-def]
    feed = str(DATA / "feeds" / "articles.json")
    for flag in ("--source", "--section"):
        result = run("ingest", flag, "Wire\r\nX-Injected: 1", feed)
        assert result.exit_code == 1
        assert result.stderr.strip() == (
            f"Error: {flag}: must be one line of text: it contains the control character "
            "U+000D (CARRIAGE RETURN)"
        )


# --- the config file ---------------------------------------------------------------------------------


def _config_with(tmp_path: Path, old: str, new: str) -> Path:
    text = (DATA / "digest.toml").read_text(encoding="utf-8")
    assert old in text
    path = tmp_path / "digest.toml"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "old, new, key",
    [
        ('title = "The Test Gazette"', r'title = "Gazette\r\nBcc: x@evil.example"', "title"),
        ('from_name = "Test Gazette"', r'from_name = "Gazette\nX: 1"', "from_name"),
        (
            'from_email = "daily@news.example"',
            r'from_email = "daily@news.example\r\nBcc: x@evil.example"',
            "from_email",
        ),
        ('reply_to = "editors@news.example"', r'reply_to = "editors@news.example\n"', "reply_to"),
        (
            'unsubscribe_mailto = "unsubscribe@news.example"',
            r'unsubscribe_mailto = "u@news.example\r\n"',
            "unsubscribe_mailto",
        ),
        (
            'base_url = "https://news.example"',
            r'base_url = "https://news.example/\r\nX: 1"',
            "base_url",
        ),
        ('{ name = "Health", stories = 2 }', r'{ name = "Health\u0000", stories = 2 }', "name"),
        ('timezone = "America/New_York"', r'timezone = "America/New_York\u0000"', "timezone"),
    ],
)
def test_config_strings_that_reach_headers_must_be_one_line(
    tmp_path: Path, old: str, new: str, key: str
) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(_config_with(tmp_path, old, new))
    message = str(err.value)
    assert f".{key}: " in message or f"{key}: " in message
    assert "control character" in message or "not an email address" in message
    assert "\n" not in message and "\r" not in message


@pytest.mark.parametrize(
    "address",
    [
        "daily@news.example, victim@evil.example",
        "Name <daily@news.example>",
        "daily news@x.example",
    ],
)
def test_a_from_address_must_be_a_plain_address(tmp_path: Path, address: str) -> None:
    path = _config_with(tmp_path, 'from_email = "daily@news.example"', f'from_email = "{address}"')
    with pytest.raises(ConfigError, match=r"newsletters\.daily\.from_email: .* is not an email"):
        load_config(path)


def test_multi_line_text_may_break_lines_but_holds_no_other_control_character(
    tmp_path: Path,
) -> None:
    ok = _config_with(
        tmp_path,
        'postal_address = "The Test Gazette, 1 Test Street, Testville"',
        r'postal_address = "The Test Gazette\n1 Test Street\nTestville"',
    )
    assert load_config(ok).site.postal_address.count("\n") == 2
    bad = _config_with(
        tmp_path,
        'postal_address = "The Test Gazette, 1 Test Street, Testville"',
        r'postal_address = "The Test Gazette\u001b[2J"',
    )
    with pytest.raises(ConfigError, match=r"site\.postal_address: must be text: it contains"):
        load_config(bad)


def test_webhook_events_with_control_characters_are_stored_clean_or_ignored(
    config: Config, sessions: sessionmaker[Session], now: datetime
) -> None:
    import json

    from digest.web_models import WebhookEvent
    from subscribers.models import Suppression

    app = create_app(
        unlimited(config, sendgrid_webhook_allow_unsigned=True), sessions, clock=fixed(now)
    )
    events = [
        {"event": "bounce\x00", "sg_event_id": "id\x00one", "email": "x\x00@example.com"},
        {
            "event": "bounce",
            "sg_event_id": "id-two",
            "email": "ann@example.com\x00",
            "reason": "5.1.1\x00",
        },
        {"event": "spamreport", "sg_event_id": "id\x1bthree", "email": "bob@example.com"},
    ]
    r = app.test_client().post("/webhooks/sendgrid", data=json.dumps(events))
    assert r.status_code == 200, r.get_data(as_text=True)
    with sessions() as s:
        assert sorted(s.scalars(select(WebhookEvent.sg_event_id))) == ["id-two", "idone", "idthree"]
        assert list(s.scalars(select(Suppression.email))) == ["bob@example.com"]
