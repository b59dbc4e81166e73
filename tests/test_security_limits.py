"""Bounded input everywhere, as an attacker or a careless user meets it: file and field limits,
finite numbers, sane dates, bounded segment rules, one-line template and database errors, XML
entities, exit codes, formula-safe exports, HEAD requests and a full disk. Each answer is a
result or one `Error:` line with a non-zero exit, and the database is unchanged after it."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from flask.testing import FlaskClient
from sqlalchemy import func, select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from digest.articles import Article
from digest.clock import fixed
from digest.config import Config
from digest.ledger import Delivery
from digest.web import create_app
from digest.web_models import SignupRequest
from digest_cli import cli
from subscribers.models import Subscriber
from tests.confirm_support import csrf_of
from tests.render_support import store_edition
from tests.web_support import add_reader, membership, token, unlimited

DATA = Path(__file__).parent / "data"
PUBLISHED = "2026-03-10T08:00:00Z"


def invoke(db_url: str, config: Path, *args: str) -> Result:
    return CliRunner().invoke(
        cli, ["--config", str(config), *args], env={"DIGEST_DATABASE_URL": db_url}
    )


@pytest.fixture
def run(db_url: str, config_path: Path):  # type: ignore[no-untyped-def]
    def go(*args: str) -> Result:
        return invoke(db_url, config_path, *args)

    return go


def one_error_line(result: Result, code: int = 1) -> str:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def articles(sessions: sessionmaker[Session]) -> int:
    with sessions() as s:
        return s.scalar(select(func.count()).select_from(Article)) or 0


def subscribers(sessions: sessionmaker[Session]) -> int:
    with sessions() as s:
        return s.scalar(select(func.count()).select_from(Subscriber)) or 0


def story(**fields: Any) -> dict[str, Any]:
    return {
        "url": "https://news.example/a",
        "title": "A headline",
        "section": "News",
        "published": PUBLISHED,
        **fields,
    }


def write_json(path: Path, items: list[dict[str, Any]]) -> Path:
    path.write_text(json.dumps(items), encoding="utf-8")
    return path


def config_file(tmp_path: Path, replace: dict[str, str] | None = None, top: str = "") -> Path:
    text = (DATA / "digest.toml").read_text(encoding="utf-8")
    for old, new in (replace or {}).items():
        assert old in text, old
        text = text.replace(old, new, 1)
    path = tmp_path / "digest.toml"
    path.write_text(top + text, encoding="utf-8")
    return path


# --- file sizes --------------------------------------------------------------------------------


def test_ingesting_dev_zero_is_one_line_not_a_memory_error(
    run, sessions: sessionmaker[Session]
) -> None:  # type: ignore[no-untyped-def]
    line = one_error_line(run("ingest", "--format", "json", "/dev/zero"))
    assert line == (
        "Error: /dev/zero: larger than the 64 MB a feed, JSON or CSV file may be; nothing was "
        "read (split it into smaller files)"
    )
    assert articles(sessions) == 0


def test_importing_an_oversized_file_is_one_line(
    run, sessions: sessionmaker[Session], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr("subscribers.importing.MAX_IMPORT_FILE_BYTES", 1024)
    big = tmp_path / "big.csv"
    big.write_text("email\n" + "".join(f"u{i}@example.com\n" for i in range(200)))
    line = one_error_line(run("subscribers", "import", str(big), "-n", "daily"))
    assert line.startswith(f"Error: {big}: larger than the 0 MB a subscriber CSV may be")
    assert subscribers(sessions) == 0


# --- fields ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields, reason",
    [
        ({"title": "T" * 501}, "title is longer than 500 characters"),
        ({"dek": "d" * 5001}, "dek is longer than 5000 characters"),
        ({"byline": "b" * 301}, "byline is longer than 300 characters"),
        ({"image_alt": "a" * 1001}, "image_alt is longer than 1000 characters"),
        ({"image_caption": "c" * 2001}, "image_caption is longer than 2000 characters"),
        ({"url": "https://news.example/" + "u" * 2048}, "url is longer than 2048 characters"),
        ({"tags": [f"t{i}" for i in range(51)]}, "more than 50 tags"),
        ({"tags": ["t" * 101]}, "a tag is longer than 100 characters"),
        ({"title": "Nul\u0000"}, "title contains the control character U+0000 (NUL)"),
        ({"byline": "By\u001b[2J"}, "byline contains the control character U+001B (ESCAPE)"),
        ({"published": "0001-01-01T00:00:00Z"}, "published date 0001-01-01 is outside 1970-2199"),
        ({"updated": "9999-12-31T23:00:00Z"}, "updated date 9999-12-31 is outside 1970-2199"),
    ],
)
def test_every_field_is_bounded_and_a_bad_one_rejects_its_item(
    run, sessions: sessionmaker[Session], tmp_path: Path, fields: dict[str, Any], reason: str
) -> None:  # type: ignore[no-untyped-def]
    good = story(url="https://news.example/good")
    path = write_json(tmp_path / "in.json", [good, story(**fields)])
    result = run("ingest", str(path))
    assert result.exit_code == 0, result.output
    assert result.stderr.strip() == f"rejected: in.json: item 2: {reason}"
    assert articles(sessions) == 1


def test_a_nul_after_the_first_8_kb_of_an_article_csv_is_handled_on_every_backend(
    run, sessions: sessionmaker[Session], tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    rows = ["url,title,dek,section,published"]
    rows += [f"https://news.example/{i},Headline {i},Dek {i},News,{PUBLISHED}" for i in range(200)]
    rows.append(f"https://news.example/nul,Nul\x00title,dek,News,{PUBLISHED}")
    rows.append(f"https://news.example/nuldek,Fine title,de\x00k,News,{PUBLISHED}")
    path = tmp_path / "wire.csv"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    assert path.stat().st_size > 8192
    result = run("ingest", str(path))
    assert result.exit_code == 0 and "Traceback" not in result.output
    assert result.stderr.strip() == (
        "rejected: wire.csv: row 202: title contains the control character U+0000 (NUL)"
    )
    assert articles(sessions) == 201
    with sessions() as s:
        dek = s.scalar(select(Article.dek).where(Article.url == "https://news.example/nuldek"))
    assert dek == "dek"


# --- numbers, dates, rules -----------------------------------------------------------------------


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
@pytest.mark.parametrize(
    "old, new, key",
    [
        ("lookback_hours = 24\n", "lookback_hours = {v}\n", "newsletters.daily.lookback_hours"),
        (
            "[newsletters.daily.utm]",
            "[newsletters.daily.gates]\nmax_article_age_hours = {v}\n\n[newsletters.daily.utm]",
            "newsletters.daily.gates.max_article_age_hours",
        ),
        (
            "[newsletters.daily.utm]",
            "catch_up_hours = {v}\n\n[newsletters.daily.utm]",
            "newsletters.daily.catch_up_hours",
        ),
        ("port = 2525\n", "port = 2525\nrate = {v}\n", "providers.smtp.rate"),
        ('dir = "outbox"\n', 'dir = "outbox"\nrate = {v}\n', "providers.outbox.rate"),
        (
            "[segments]",
            "[selection]\nhalf_life_hours = {v}\n\n[segments]",
            "selection.half_life_hours",
        ),
    ],
)
def test_the_config_refuses_nan_and_infinities(
    db_url: str, tmp_path: Path, old: str, new: str, key: str, value: str
) -> None:
    path = config_file(tmp_path, {old: new.format(v=value)})
    line = one_error_line(invoke(db_url, path, "edition", "build", "daily"), code=2)
    assert line == f"Error: {path}: {key}: must be a finite number, not {float(value)}"


@pytest.mark.parametrize("day", ["0001-01-01", "9999-12-31", "1969-12-31", "2200-01-01"])
def test_dates_outside_1970_to_2199_are_refused(run, day: str) -> None:  # type: ignore[no-untyped-def]
    for args in (("edition", "build", "daily"), ("edition", "show", "daily"), ("send", "daily")):
        result = run(*args, "--date", day)
        assert result.exit_code == 2 and "Traceback" not in result.output
        assert f"{day} is outside 1970-2199" in result.output
    result = run("articles", "--since", day)
    assert result.exit_code == 2 and f"{day} is outside 1970-2199" in result.output


@pytest.mark.parametrize(
    "rule, problem",
    [
        ("not " * 900 + 'tags contains "vip"', "nests 'not' and '(' more than 20 deep"),
        ("(" * 1900 + 'tags contains "vip"' + ")" * 1900, "nests 'not' and '(' more than 20 deep"),
        (" or ".join(['tags contains "vip"'] * 101), "has more than 100 conditions"),
        ("created after 9999-12-31", "9999-12-31 is outside 1970-2199"),
        ('tags contains "' + "x" * 4000 + '"', "rule is longer than 4000 characters"),
    ],
)
def test_segment_rules_are_bounded(db_url: str, tmp_path: Path, rule: str, problem: str) -> None:
    path = config_file(tmp_path, {"[segments]\n": f"[segments]\nbomb = '{rule}'\n"})
    for args in (("segments", "list"), ("subscribers", "export", "--segment", "bomb")):
        line = one_error_line(invoke(db_url, path, *args), code=2)
        assert line.startswith("Error: segments.bomb: ") and problem in line


# --- templates and the database -----------------------------------------------------------------


@pytest.mark.parametrize(
    "template, message",
    [
        ("<p>\n{{ greeting }}\n{{ editors_note }}\n</p>", "line 3: 'editors_note' is undefined"),
        ('<p>\n{% include "_masthead.html" %}</p>', "line 2: includes '_masthead.html'"),
        (
            "<p>\n{{ sections[0].nope.deeper }}</p>",
            "line 2: 'digest.render._Section object' has no attribute 'nope'",
        ),
        ("<p>\n{% if %}</p>", "line 2: Expected an expression"),
    ],
)
def test_a_template_mistake_is_one_line_naming_file_line_and_name(
    db_url: str,
    tmp_path: Path,
    sessions: sessionmaker[Session],
    template: str,
    message: str,
) -> None:
    folder = tmp_path / "tpl"
    folder.mkdir()
    (folder / "digest.html").write_text(template, encoding="utf-8")
    path = config_file(tmp_path, top='templates_dir = "tpl"\n')
    with sessions.begin() as session:
        store_edition(session)
    line = one_error_line(invoke(db_url, path, "preview", "daily", "--date", "2026-03-10"))
    assert line.startswith(f"Error: template {folder / 'digest.html'}, ") and message in line


def _read_only(db_url: str) -> str:
    url = make_url(db_url)
    if url.get_backend_name() == "sqlite":
        return f"sqlite:///file:{url.database}?mode=ro&uri=true"
    options = "-c default_transaction_read_only=on"
    return url.update_query_dict({"options": options}).render_as_string(hide_password=False)


def test_a_read_only_database_is_one_line(
    db_url: str, config_path: Path, sessions: sessionmaker[Session]
) -> None:
    result = invoke(
        _read_only(db_url), config_path, "subscribers", "add", "ro@example.com", "-n", "daily"
    )
    line = one_error_line(result)
    assert line.startswith("Error: database is read-only: ")
    assert subscribers(sessions) == 0


# --- XML -------------------------------------------------------------------------------------------


class _Listener:
    """A local HTTP server that counts requests: proof that nothing was fetched."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        listener = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                listener.paths.append(self.path)
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b'<!ENTITY leaked "FETCHED">')

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def listener() -> Iterator[_Listener]:
    server = _Listener()
    yield server
    server.close()


def _feed(doctype: str, title: str) -> str:
    return (
        f'<?xml version="1.0"?>\n{doctype}\n<rss version="2.0"><channel><title>Wire</title>'
        f"<item><title>{title}</title><link>https://news.example/x</link>"
        "<category>News</category><pubDate>Tue, 10 Mar 2026 08:00:00 GMT</pubDate></item>"
        "</channel></rss>\n"
    )


LAUGHS = "".join(f'<!ENTITY lol{i} "{f"&lol{i - 1};" * 10 if i else "lol"}">' for i in range(10))


@pytest.mark.parametrize(
    "doctype, title, what",
    [
        (f"<!DOCTYPE rss [{LAUGHS}]>", "&lol9;", "entity 'lol0'"),
        ('<!DOCTYPE rss [<!ENTITY xxe SYSTEM "file:///etc/hostname">]>', "&xxe;", "entity 'xxe'"),
        ('<!DOCTYPE rss [<!ENTITY xxe SYSTEM "{url}/x">]>', "&xxe;", "entity 'xxe'"),
        ('<!DOCTYPE rss [<!ENTITY % p SYSTEM "{url}/p"> %p;]>', "T", "entity 'p'"),
        # Malformed before the entity is declared: refused by a scan, as feedparser's loose
        # parser would otherwise read the items.
        ('<x/><!DOCTYPE rss [<!ENTITY a "x">]>', "Fish &a;", "an entity"),
    ],
)
def test_feeds_declaring_entities_are_refused_and_nothing_is_read(
    run,
    sessions: sessionmaker[Session],
    tmp_path: Path,
    listener: _Listener,
    doctype: str,
    title: str,
    what: str,
) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "feed.xml"
    path.write_text(_feed(doctype.replace("{url}", listener.url), title), encoding="utf-8")
    line = one_error_line(run("ingest", str(path)))
    assert line.startswith(f"Error: {path}: the feed declares {what} (<!ENTITY>); refused")
    assert articles(sessions) == 0 and listener.paths == []


def test_an_external_dtd_is_never_fetched_and_the_feed_is_read(
    run, sessions: sessionmaker[Session], tmp_path: Path, listener: _Listener
) -> None:  # type: ignore[no-untyped-def]
    doctype = (
        '<!DOCTYPE rss PUBLIC "-//Netscape Communications//DTD RSS 0.91//EN" '
        f'"{listener.url}/rss-0.91.dtd">'
    )
    path = tmp_path / "rss091.xml"
    path.write_text(_feed(doctype, "Plain headline"), encoding="utf-8")
    result = run("ingest", str(path))
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "rss091.xml: 1 new, 0 updated, 0 unchanged, 0 rejected"
    assert listener.paths == []


# --- exit codes ------------------------------------------------------------------------------------


def test_ingest_exit_codes_all_rejected_partial_and_strict(
    run, sessions: sessionmaker[Session], tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    bad = write_json(tmp_path / "bad.json", [story(url="nope"), story(title="")])
    line = one_error_line(run("ingest", str(bad)))
    assert line == f"Error: {bad}: every item was rejected, nothing stored from it"

    mixed = write_json(tmp_path / "mixed.json", [story(), story(url="nope")])
    assert run("ingest", str(mixed)).exit_code == 0
    assert articles(sessions) == 1

    other = write_json(tmp_path / "other.json", [story(url="https://news.example/b")])
    strict = run("ingest", "--strict", str(other), str(mixed))
    assert one_error_line(strict) == "Error: --strict: 1 item(s) rejected, so nothing was stored"
    assert "other.json: 1 new, 0 updated, 0 unchanged, 0 rejected (nothing stored: --strict)" in (
        strict.stdout
    )
    assert articles(sessions) == 1
    assert run("ingest", "--strict", str(other)).exit_code == 0
    assert articles(sessions) == 2


def test_import_exit_codes_all_rejected_partial_and_strict(
    run, sessions: sessionmaker[Session], tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "bad.csv"
    bad.write_text("email,name\nnot-an-address,A\n@,B\n", encoding="utf-8")
    line = one_error_line(run("subscribers", "import", str(bad), "-n", "daily"))
    assert line == f"Error: {bad}: every row was rejected; nothing was imported"

    mixed = tmp_path / "mixed.csv"
    mixed.write_text("email\nann@example.com\nnope\n", encoding="utf-8")
    strict = run("subscribers", "import", str(mixed), "-n", "daily", "--strict")
    assert one_error_line(strict) == (
        f"Error: {mixed}: --strict: 1 row(s) rejected, so nothing was imported"
    )
    assert subscribers(sessions) == 0
    assert run("subscribers", "import", str(mixed), "-n", "daily").exit_code == 0
    assert subscribers(sessions) == 1


# --- exports -----------------------------------------------------------------------------------------


FORMULAS = ['=HYPERLINK("https://evil.example","Click")', "+1+1", "-2+3", "@SUM(A1)"]


def test_export_escapes_formula_cells_and_import_reads_them_back(
    run, sessions: sessionmaker[Session], config: Config, now: datetime, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    for i, formula in enumerate(FORMULAS):
        add_reader(
            sessions, config, f"r{i}@example.com", now, name=formula, attributes={"plan": formula}
        )
    out = tmp_path / "out.csv"
    assert run("subscribers", "export", "-n", "daily", "-o", str(out)).exit_code == 0
    text = out.read_text(encoding="utf-8")
    for formula in FORMULAS:
        assert f",'{formula[:4]}" in text.replace('"', "")
    cells = [line.split(",") for line in text.splitlines()[1:]]
    assert all(not c.startswith(("=", "+", "-", "@")) for row in cells for c in row)
    # The same file imported back keeps the values as they were.
    assert run("subscribers", "import", str(out), "-n", "daily").exit_code == 0
    with sessions() as s:
        assert sorted(s.scalars(select(Subscriber.name))) == sorted(FORMULAS)


def test_the_ledger_csv_escapes_formula_cells(
    run, sessions: sessionmaker[Session], config: Config, now: datetime
) -> None:  # type: ignore[no-untyped-def]
    sub = add_reader(sessions, config, "ann@example.com", now)
    with sessions.begin() as session:
        edition = store_edition(session)
        session.add(
            Delivery(
                edition_id=edition.id,
                subscriber_id=sub,
                email="ann@example.com",
                name="Ann",
                state="failed",
                sections="",
                variant="v-1",
                attempts=1,
                created_at=now,
                last_error='=HYPERLINK("https://evil.example")',
            )
        )
    result = run("sends", "report", "daily", "--date", "2026-03-10", "--csv")
    assert result.exit_code == 0, result.output
    assert "'=HYPERLINK(" in result.stdout and ",=HYPERLINK" not in result.stdout


# --- HEAD, and a full disk -----------------------------------------------------------------------------


@pytest.fixture
def client(config: Config, sessions: sessionmaker[Session], now: datetime) -> FlaskClient:
    return create_app(unlimited(config), sessions, clock=fixed(now)).test_client()


def test_head_requests_never_change_anything(
    client: FlaskClient, config: Config, sessions: sessionmaker[Session], now: datetime
) -> None:
    ann = add_reader(sessions, config, "ann@example.com", now)
    r = client.head(f"/u/{token(ann, 'unsubscribe')}", data={"List-Unsubscribe": "One-Click"})
    assert r.status_code == 200
    assert membership(sessions, ann).status == "active"

    prefs = f"/p/{token(ann, 'preferences')}"
    page = client.get(prefs).get_data(as_text=True)
    form = {"csrf": csrf_of(page), "order": ["News", "Business", "Health", "Entertainment"]}
    assert (
        client.head(prefs, data={**form, "section": ["News"], "delivery": "paused"}).status_code
        == 200
    )
    assert membership(sessions, ann).paused is False

    csrf = csrf_of(client.get("/subscribe/daily").get_data(as_text=True))
    r = client.head("/subscribe/daily", data={"csrf": csrf, "email": "new@example.com"})
    assert r.status_code == 200
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(SignupRequest)) == 0
        assert s.scalar(select(func.count()).select_from(Subscriber)) == 1


def test_a_full_disk_leaves_no_stray_tmp_in_the_outbox(tmp_path: Path) -> None:
    from datetime import UTC, date

    from digest.config import load_config
    from digest.message import Addressee, VariantMessage
    from digest.providers.base import Batch, Kind, Outgoing, no_checkpoint
    from digest.providers.outbox import OutboxProvider
    from digest.render import Personalised

    config = load_config(DATA / "digest.toml")
    message = VariantMessage(config, config.newsletter("daily"), date(2026, 3, 10), "v-1")
    to = Addressee("ann@example.com", "Ann", "https://news.example/u/t", "m@news.example", 1)
    content = Personalised("Hi", "<p>" + "x" * 10_000 + "</p>", "Hi\n")
    when = datetime(2026, 3, 10, 11, tzinfo=UTC)
    batch = Batch(message, [Outgoing(to, content)], when)
    outbox = OutboxProvider(tmp_path / "out")
    (tmp_path / "out").mkdir()
    # The temporary file lands on a device that is always full: the write fails with ENOSPC.
    path = outbox.path_for(batch, 1)
    import os

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.symlink_to("/dev/full")
    (outcome,) = outbox.send(batch, no_checkpoint)
    assert outcome.kind is Kind.RETRY and "No space left on device" in (outcome.error or "")
    assert list((tmp_path / "out").iterdir()) == []
