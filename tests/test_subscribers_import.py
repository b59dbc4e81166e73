"""CSV import and export of subscribers."""

from __future__ import annotations

import io
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from digest.config import Config
from digest.errors import InputError
from subscribers.audience import audience, find_subscriber
from subscribers.importing import AddressChecker, ImportReport, export_csv, import_bytes, import_csv
from subscribers.models import Consent, Subscriber
from subscribers.service import add_subscriber, check_email, forget, suppress, unsubscribe


def _import(
    session: Session, config: Config, text: str | bytes, at: datetime, newsletter: str = "daily"
) -> ImportReport:
    data = text.encode("utf-8") if isinstance(text, str) else text
    report = import_bytes(session, config.newsletter(newsletter), data, file="list.csv", at=at)
    session.commit()
    return report


def _count(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(Subscriber)) or 0


def _counts(r: ImportReport) -> tuple[int, int, int, int, int]:
    return (r.added, r.updated, r.unchanged, r.rejected, r.suppressed)


def test_bom_crlf_quoted_commas_header_case_and_extra_columns(
    session: Session, config: Config, now: datetime
) -> None:
    text = (
        "\ufeffE-mail Ignored,EMAIL, Name ,Region,Plan,SECTIONS,Tags,TimeZone\r\n"
        'x,Ann@Example.com,"Lee, Ann",Tampa Bay,pro,"business; news",VIP; Press,Asia/Tokyo\r\n'
        'x,bob@example.com,Bob,"Orlando, FL",,,,\r\n'
        "\r\n"
    )
    report = _import(session, config, text, now)
    assert report.summary() == (
        "list.csv → daily: 2 added, 0 updated, 0 unchanged, 0 rejected, 0 suppressed"
    )
    ann = find_subscriber(session, "ann@example.com")
    assert (ann.name, ann.timezone, ann.source) == ("Lee, Ann", "Asia/Tokyo", "import:list.csv")
    assert ann.attribute_map() == {"e-mail ignored": "x", "region": "Tampa Bay", "plan": "pro"}
    assert ann.tag_names() == ["press", "vip"]
    got = {r.email: r.sections for r in audience(session, config, config.newsletter("daily"))}
    assert got == {
        "ann@example.com": ("Business", "News"),
        "bob@example.com": config.newsletter("daily").section_names,
    }
    assert find_subscriber(session, "bob@example.com").attribute_map()["region"] == "Orlando, FL"
    consent = session.scalars(select(Consent).where(Consent.subscriber_id == ann.id)).one()
    assert (consent.method, consent.detail, consent.at) == ("import", "CSV import of list.csv", now)


def test_bad_rows_are_reported_and_good_rows_imported(
    session: Session, config: Config, now: datetime
) -> None:
    text = (
        "email,name,sections,timezone\n"
        "ann@example.com,Ann,,\n"
        "not-an-address,X,,\n"
        "ANN@EXAMPLE.COM,Ann again,,\n"
        ",nobody,,\n"
        "cy@example.com,Cy,Sports,\n"
        "dee@example.com,Dee,,Mars/Base\n"
        "eve@example.com,Eve,,,extra\n"
        "fay@example.com,Fay,,\n"
        f"gus@example.com,{'G' * 301},,\n"
    )
    report = _import(session, config, text, now)
    assert _counts(report) == (2, 0, 0, 7, 0)
    assert report.error_lines() == [
        "list.csv: row 3: 'not-an-address' is not a valid email address: An email address must "
        "have an @-sign.",
        "list.csv: row 4: ann@example.com is a duplicate of row 2",
        "list.csv: row 5: email is empty",
        "list.csv: row 6: unknown section 'Sports' (sections: News, Business, Health, "
        "Entertainment)",
        "list.csv: row 7: timezone 'Mars/Base' is not an IANA time zone",
        "list.csv: row 8: 5 cells but the header names 4 columns",
        "list.csv: row 10: name is longer than 300 characters",
    ]
    assert find_subscriber(session, "ann@example.com").name == "Ann"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "list.csv: the file is empty (expected a header row with an email column)"),
        (b"  \r\n", "list.csv: the file is empty"),
        ("email,name\nzoë@exämple.com,Zoë\n".encode("latin-1"), "list.csv: not UTF-8 text"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "list.csv: not a CSV file (it contains binary"),
        (
            b'{"email": "a@example.com"}',
            "list.csv: not a subscriber CSV: the header row has no 'email' column",
        ),
        (b"email,name,Email\na@example.com,A,b\n", "list.csv: column 'email' appears twice"),
        (b'email,name\n"a@example.com,A\n', "list.csv: not valid CSV near line"),
    ],
)
def test_unusable_file_is_one_error_and_changes_nothing(
    session: Session, config: Config, now: datetime, data: bytes, message: str
) -> None:
    _import(session, config, "email\nkeep@example.com\n", now)
    with pytest.raises(InputError) as err:
        _import(session, config, data, now)
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)
    session.rollback()
    assert _count(session) == 1


def test_header_only_file_imports_nothing(session: Session, config: Config, now: datetime) -> None:
    assert _counts(_import(session, config, "Email,Name\r\n", now)) == (0, 0, 0, 0, 0)


def test_reimport_updates_never_duplicates(session: Session, config: Config, now: datetime) -> None:
    first = "email,name,region,tags,sections\na@example.com,Ann,Tampa Bay,vip,News\nb@example.com,Bob,,,\n"
    _import(session, config, first, now)
    assert _counts(_import(session, config, first, now)) == (0, 0, 2, 0, 0)
    second = (
        "email,name,region,tags,sections\n"
        "A@example.com,Ann Lee,Orlando,vip; press,Health; News\n"
        "b@example.com,,,,\n"
        "c@example.com,Cy,,,\n"
    )
    assert _counts(_import(session, config, second, now)) == (1, 1, 1, 0, 0)
    a = find_subscriber(session, "a@example.com")
    session.refresh(a)
    assert (a.name, a.attribute_map(), a.tag_names()) == (
        "Ann Lee",
        {"region": "Orlando"},
        ["press", "vip"],
    )
    assert _count(session) == 3
    recipients = {
        r.email: r.sections for r in audience(session, config, config.newsletter("daily"))
    }
    assert recipients["a@example.com"] == ("Health", "News")


def test_import_onto_a_second_newsletter_adds_membership(
    session: Session, config: Config, now: datetime
) -> None:
    _import(session, config, "email\na@example.com\n", now)
    report = _import(session, config, "email,sections\na@example.com,business\n", now, "strict")
    assert _counts(report) == (0, 1, 0, 0, 0)
    [r] = audience(session, config, config.newsletter("strict"))
    assert (r.email, r.sections) == ("a@example.com", ("Business",))


def test_reimport_never_reactivates_unsubscribed(
    session: Session, config: Config, now: datetime
) -> None:
    _import(session, config, "email\na@example.com\nb@example.com\n", now)
    a = find_subscriber(session, "a@example.com")
    b = find_subscriber(session, "b@example.com")
    unsubscribe(session, a.id, "daily", reason="link", at=now)
    unsubscribe(session, b.id, None, reason="link", at=now)
    session.commit()
    later = now + timedelta(days=30)
    _import(session, config, "email,name\na@example.com,Ann\nb@example.com,Bob\n", later)
    # A new list does not sign up someone who left every list either.
    _import(session, config, "email\nb@example.com\n", later, "strict")
    assert list(audience(session, config, config.newsletter("daily"))) == []
    assert list(audience(session, config, config.newsletter("strict"))) == []
    assert find_subscriber(session, "a@example.com").name == "Ann"


def test_suppression_beats_import(session: Session, config: Config, now: datetime) -> None:
    suppress(session, "bounced@example.com", "bounced", now)
    report = _import(session, config, "email\nBounced@Example.com\nok@example.com\n", now)
    assert _counts(report) == (1, 0, 0, 0, 1)
    assert [r.email for r in audience(session, config, config.newsletter("daily"))] == [
        "ok@example.com"
    ]


def test_forget_then_reimport_keeps_the_person_out(
    session: Session, config: Config, now: datetime
) -> None:
    _import(session, config, "email,name\nann@example.com,Ann\n", now)
    forget(session, "ann@example.com", at=now)
    session.commit()
    report = _import(session, config, "email,name\nANN@example.com,Ann\n", now)
    assert _counts(report) == (0, 0, 0, 0, 1)
    assert _count(session) == 0


def test_export_round_trips(
    session: Session, config: Config, now: datetime, tmp_path: Path
) -> None:
    daily = config.newsletter("daily")
    add_subscriber(
        session,
        daily,
        "a@example.com",
        at=now,
        name="Lee, Ann",
        attributes={"region": "Tampa Bay"},
        tags=["vip"],
        sections=["Health", "News"],
    )
    add_subscriber(session, daily, "b@example.com", at=now, name="Bob", attributes={"plan": "pro"})
    session.commit()
    out = io.StringIO()
    assert export_csv(session, config, out, newsletter=daily) == 2
    assert out.getvalue().splitlines() == [
        "email,name,status,timezone,created,sections,tags,plan,region",
        'a@example.com,"Lee, Ann",active,,2026-03-10,Health; News,vip,,Tampa Bay',
        "b@example.com,Bob,active,,2026-03-10,News; Business; Health; Entertainment,,pro,",
    ]
    path = tmp_path / "export.csv"
    path.write_text(out.getvalue(), encoding="utf-8")
    assert _counts(import_csv(session, daily, path, at=now)) == (0, 0, 2, 0, 0)

    vip = io.StringIO()
    assert export_csv(session, config, vip, segments=["vip"]) == 1
    assert vip.getvalue().splitlines()[1].startswith("a@example.com,")


_local = st.text(st.sampled_from("abcXYZ019.!#$%&'*+/=?^_`{|}~-\"\\ @é"), min_size=0, max_size=70)


@given(_local)
def test_fast_address_check_agrees_with_email_validator(local: str) -> None:
    checker = AddressChecker()
    assert checker.problem("first@example.com") is None  # the domain is now known
    address = f"{local}@example.com"
    try:
        check_email(address)
        expected = True
    except InputError:
        expected = False
    if address.strip() == address:
        assert (checker.problem(address) is None) == expected
