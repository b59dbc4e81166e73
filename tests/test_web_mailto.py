"""`digest unsubscribe --from-mbox`: the mailto: half of List-Unsubscribe."""

from __future__ import annotations

import mailbox
import re
from email.message import EmailMessage
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
from click.testing import CliRunner

from digest.message import list_unsubscribe
from digest_cli import cli
from tests.web_support import add_reader, membership, token


def mailto_subject(config, subscriber_id: int, newsletter: str = "daily") -> str:
    """The subject a mail client puts in when the reader uses the List-Unsubscribe mailto."""
    url = f"{config.site.base_url}/u/{token(subscriber_id, 'unsubscribe', newsletter)}"
    header = list_unsubscribe(url, config.site.unsubscribe_mailto)
    mailto = re.search(r"<mailto:([^>]+)>", header)
    assert mailto, header
    query = parse_qs(urlsplit("mailto:" + mailto.group(1)).query)
    return unquote(query["subject"][0])


def mail(sender: str, subject: str, body: str = "", **headers: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = "unsubscribe@news.example"
    msg["Subject"] = subject
    for name, value in headers.items():
        msg[name.replace("_", "-")] = value
    msg.set_content(body or "Sent from my phone")
    return msg


def write_mbox(path: Path, messages: list[EmailMessage]) -> Path:
    box = mailbox.mbox(path)
    for m in messages:
        box.add(m)
    box.close()
    return path


@pytest.fixture
def run(db_url, config_path, monkeypatch):
    monkeypatch.setenv("DIGEST_DATABASE_URL", db_url)

    def _run(*args: str):
        return CliRunner().invoke(cli, ["--config", str(config_path), *args])

    return _run


def test_mailto_subject_token_unsubscribes_from_that_newsletter(
    run, sessions, config, now, tmp_path
):
    sid = add_reader(sessions, config, "eli@example.com", now)
    add_reader(sessions, config, "eli@example.com", now, newsletter="strict")
    subject = mailto_subject(config, sid)
    assert subject.startswith("unsubscribe ")
    # The token is the authority: it works whoever sends it (forwarding, aliases).
    box = write_mbox(tmp_path / "in.mbox", [mail("Eli <eli.alias@example.org>", subject)])
    result = run("unsubscribe", "--from-mbox", str(box))
    assert result.exit_code == 0, result.output
    assert "1 message(s): 1 unsubscribed" in result.output
    assert membership(sessions, sid).status == "unsubscribed"
    assert membership(sessions, sid).unsubscribe_reason == "unsubscribe email"
    assert membership(sessions, sid, "strict").status == "active"
    assert "eli" not in result.output  # no addresses in the output


def test_token_in_the_body_when_the_client_dropped_the_subject(
    run, sessions, config, now, tmp_path
):
    sid = add_reader(sessions, config, "fay@example.com", now)
    body = f"> {mailto_subject(config, sid)}\n(quoted-printable wraps long lines)"
    msg = mail("fay@example.com", "Re: your newsletter", body)
    box = write_mbox(tmp_path / "in.mbox", [msg])
    assert run("unsubscribe", "--from-mbox", str(box)).exit_code == 0
    assert membership(sessions, sid).status == "unsubscribed"


def test_sender_address_without_token_unsubscribes_from_every_list(
    run, sessions, config, now, tmp_path
):
    sid = add_reader(sessions, config, "gus@example.com", now)
    add_reader(sessions, config, "gus@example.com", now, newsletter="strict")
    box = write_mbox(tmp_path / "in.mbox", [mail("Gus <GUS@Example.com>", "Unsubscribe")])
    assert run("unsubscribe", "--from-mbox", str(box)).exit_code == 0
    assert membership(sessions, sid, "daily").status == "unsubscribed"
    assert membership(sessions, sid, "strict").status == "unsubscribed"


def test_other_mail_is_left_alone(run, sessions, config, now, tmp_path):
    sid = add_reader(sessions, config, "hal@example.com", now)
    forged = token(sid, "unsubscribe", secret="someone-else")
    messages = [
        mail("hal@example.com", "Love the newsletter!"),  # no request
        mail("stranger@example.com", "unsubscribe"),  # not a subscriber
        mail("x@example.com", f"unsubscribe {forged}"),  # forged token, stranger
        mail(
            "hal@example.com",
            "Out of office: unsubscribe",
            mailto_subject(config, sid),
            Auto_Submitted="auto-replied",
        ),
        mail("MAILER-DAEMON@mx.example", f"Undelivered: {mailto_subject(config, sid)}"),
    ]
    box = write_mbox(tmp_path / "in.mbox", messages)
    result = run("unsubscribe", "--from-mbox", str(box))
    assert result.exit_code == 0
    assert "2 automatic (skipped)" in result.output
    assert "1 not an unsubscribe request" in result.output
    assert "2 unknown sender" in result.output
    assert membership(sessions, sid).status == "active"


def test_running_twice_changes_nothing_more(run, sessions, config, now, tmp_path):
    sid = add_reader(sessions, config, "ida@example.com", now)
    box = write_mbox(tmp_path / "in.mbox", [mail("ida@example.com", mailto_subject(config, sid))])
    assert "1 unsubscribed" in run("unsubscribe", "--from-mbox", str(box)).output
    at = membership(sessions, sid).unsubscribed_at
    again = run("unsubscribe", "--from-mbox", str(box))
    assert "1 already unsubscribed" in again.output
    assert membership(sessions, sid).unsubscribed_at == at


def test_maildir_is_read_too(run, sessions, config, now, tmp_path):
    sid = add_reader(sessions, config, "jo@example.com", now)
    box = mailbox.Maildir(tmp_path / "Maildir")
    box.add(mail("jo@example.com", mailto_subject(config, sid)))
    box.close()
    result = run("unsubscribe", "--from-mbox", str(tmp_path / "Maildir"))
    assert result.exit_code == 0, result.output
    assert membership(sessions, sid).status == "unsubscribed"


def test_missing_mailbox_is_one_clear_error(run, tmp_path):
    result = run("unsubscribe", "--from-mbox", str(tmp_path / "nope.mbox"))
    assert result.exit_code == 1
    assert result.output.startswith("Error: ")
    assert "no such mbox file or maildir folder" in result.output
    (tmp_path / "plain").mkdir()
    result = run("unsubscribe", "--from-mbox", str(tmp_path / "plain"))
    assert "not a maildir" in result.output
