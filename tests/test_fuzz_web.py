"""Fuzzing the web app: any method, path, form and body gives a page (never a 500); GET and
HEAD change nothing, and neither does any request that is answered with an error."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any
from urllib.parse import quote

import pytest
from flask.testing import FlaskClient
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from digest.clock import fixed
from digest.config import Config
from digest.web import create_app, make_form_token
from tests.fuzz_support import JSON_VALUE, TEXT, fuzz_settings, snapshot
from tests.web_support import SECRET, add_reader, token, unlimited

pytestmark = pytest.mark.fuzz
FIELDS = ["List-Unsubscribe", "csrf", "email", "name", "website", "order", "section", "move",
          "delivery"]  # fmt: skip
EVENT_KEYS = ["event", "email", "sg_event_id", "delivery_id", "reason", "type", "sg_message_id",
              "timestamp"]  # fmt: skip
# What can arrive over HTTP: bytes, so a lone surrogate is its (invalid) UTF-8 encoding.
SEGMENT = TEXT.map(lambda t: quote(t.encode("utf-8", "surrogatepass"), safe="") or "x")
WIRE_TEXT = TEXT.map(lambda t: t.encode("utf-8", "surrogatepass").decode("utf-8", "replace"))


@pytest.fixture
def app_client(
    config: Config, sessions: sessionmaker[Session], now: datetime
) -> tuple[FlaskClient, dict[str, str]]:
    reader = add_reader(sessions, config, "ann@example.com", now, name="Ann")
    cfg = unlimited(config, sendgrid_webhook_allow_unsigned=True)
    client = create_app(cfg, sessions, clock=fixed(now)).test_client()
    tokens = {
        purpose: token(reader, purpose) for purpose in ("unsubscribe", "preferences", "confirm")
    }
    stamp = int(now.timestamp())
    tokens["csrf-u"] = make_form_token(SECRET, tokens["preferences"], stamp)
    tokens["csrf-s"] = make_form_token(SECRET, "subscribe:daily", stamp)
    return client, tokens


@st.composite
def request_of(draw: st.DrawFn, tokens: dict[str, str]) -> dict[str, Any]:
    link = draw(st.sampled_from([*tokens.values(), "x"]) | SEGMENT)
    path = draw(
        st.sampled_from(
            [
                f"/u/{link}",
                f"/p/{link}",
                f"/confirm/{link}",
                "/subscribe/daily",
                f"/subscribe/{link}",
                "/archive/daily/",
                f"/archive/daily/{link}",
                "/archive/daily/2026-03-10",
                "/webhooks/sendgrid",
                f"/{link}",
            ]
        )
    )
    method = draw(st.sampled_from(["GET", "HEAD", "POST", "POST", "POST", "PUT", "DELETE"]))
    form = draw(
        st.dictionaries(
            st.sampled_from(FIELDS),
            st.sampled_from([*tokens.values(), "One-Click"])
            | WIRE_TEXT
            | st.lists(WIRE_TEXT, max_size=3),
            max_size=5,
        )
    )
    events = st.lists(
        st.dictionaries(st.sampled_from(EVENT_KEYS), JSON_VALUE, max_size=6), max_size=3
    )
    body = draw(
        st.one_of(
            events.map(lambda e: json.dumps(e, allow_nan=True).encode()),
            JSON_VALUE.map(lambda v: json.dumps(v, allow_nan=True).encode()),
            st.binary(max_size=100),
        )
    )
    origin = draw(st.sampled_from([None, "https://news.example", "https://evil.example", "null"]))
    headers = {"Origin": origin} if origin else {}
    if path == "/webhooks/sendgrid":
        return {"method": method, "path": path, "data": body, "headers": headers}
    return {"method": method, "path": path, "data": form, "headers": headers}


@fuzz_settings(40)
@given(data=st.data())
def test_any_request_gets_a_page_and_only_a_successful_post_changes_anything(
    engine: Engine, app_client: tuple[FlaskClient, dict[str, str]], data: st.DataObject
) -> None:
    client, tokens = app_client
    req = data.draw(request_of(tokens))
    before = snapshot(engine)
    response = client.open(
        req["path"], method=req["method"], data=req["data"], headers=req["headers"]
    )
    assert response.status_code < 500, (req, response.get_data(as_text=True)[:300])
    if req["method"] != "POST" or response.status_code >= 400:
        assert snapshot(engine) == before, req
