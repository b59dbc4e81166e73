"""Load and validate digest.toml plus the environment: the one place that reads configuration.

Secrets never live in the file: the file names the environment variable that holds them
(`api_key_env`, `password_env`), and the database URL comes from DIGEST_DATABASE_URL.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from dataclasses import dataclass, field
from datetime import time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from digest.errors import ConfigError
from digest.limits import MAX_CONFIG_FILE_BYTES
from digest.text import line_problem, text_problem

DEFAULT_DATABASE_URL = "sqlite:///.var/digest.db"
PROVIDERS = ("outbox", "smtp", "sendgrid")
_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
# An address that goes into From, Reply-To or a mailto: one local part, one domain, nothing a
# header could be bent with (RFC 5322 quoted local parts are not needed by any sender).
_PLAIN_ADDRESS = re.compile(r'[^\s@<>,;:"()\[\]\\]+@[^\s@<>,;:"()\[\]\\]+')


@dataclass(frozen=True)
class SectionConfig:
    name: str
    stories: int = 3
    min: int = 0


@dataclass(frozen=True)
class SelectionWeights:
    """Weights of the selection score; see README "How stories are picked"."""

    half_life_hours: float = 12.0
    boost: float = 2.0
    popularity_floor: float = 10.0
    title_similarity: float = 0.6
    dek_similarity: float = 0.75


@dataclass(frozen=True)
class UtmConfig:
    source: str = "digest"
    medium: str = "email"
    campaign: str = "{newsletter}-{date}"


@dataclass(frozen=True)
class GateConfig:
    """Content gates checked before an unattended send."""

    max_article_age_hours: float = 24.0
    enforce_section_minimums: bool = True
    refuse_repeat: bool = True


@dataclass(frozen=True)
class BlockConfig:
    """A note shown only to members of a segment, at the top (after the intro) or the bottom
    (before the footer) of the email. Plain text: the template escapes it."""

    segment: str
    title: str
    text: str
    link: str | None = None
    position: str = "top"  # top | bottom
    link_text: str = "Learn more"


BLOCK_POSITIONS = ("top", "bottom")


@dataclass(frozen=True)
class NewsletterConfig:
    id: str
    title: str
    from_email: str
    from_name: str
    reply_to: str | None
    sections: tuple[SectionConfig, ...]
    timezone: str
    send_time: time
    lookback_hours: float = 24.0
    provider: str = "outbox"
    strict_sections: bool = False
    subject: str = "{title}: {lead}"
    preheader: str = "{headlines}"
    description: str = ""
    double_opt_in: bool = False
    local_time_delivery: bool = False
    utm: UtmConfig | None = None
    gates: GateConfig = field(default_factory=GateConfig)
    catch_up_hours: float = 6.0
    blocks: tuple[BlockConfig, ...] = ()

    @property
    def section_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.sections)

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def section(self, name: str) -> SectionConfig | None:
        for s in self.sections:
            if s.name.casefold() == name.casefold():
                return s
        return None


@dataclass(frozen=True)
class SmtpConfig:
    host: str = "127.0.0.1"
    port: int = 25
    security: str = "none"  # none | starttls | tls
    username: str | None = None
    password_env: str = "DIGEST_SMTP_PASSWORD"
    timeout: float = 30.0
    rate: float = 0.0  # messages per second; 0 = unlimited
    # Connections a worker keeps open at once, each delivering its own batch: four round
    # trips a message make one connection slow against a distant relay.
    connections: int = 1

    @property
    def password(self) -> str | None:
        return os.environ.get(self.password_env) or None


@dataclass(frozen=True)
class SendGridConfig:
    host: str = "https://api.sendgrid.com"
    api_key_env: str = "SENDGRID_API_KEY"
    timeout: float = 10.0
    rate: float = 0.0
    batch_size: int = 1000
    # Requests a worker keeps going at once: SendGrid answers a 1000-recipient request in
    # a few hundred ms, so one at a time caps a worker well below what the API takes.
    in_flight: int = 2

    @property
    def api_key(self) -> str | None:
        return os.environ.get(self.api_key_env) or None


@dataclass(frozen=True)
class OutboxConfig:
    dir: Path = Path(".var/outbox")
    rate: float = 0.0


@dataclass(frozen=True)
class SiteConfig:
    """Public facts about the sender, used in every email's footer and links."""

    base_url: str = "http://127.0.0.1:8000"
    postal_address: str = "digest, 1 Example Street, Springfield"
    unsubscribe_mailto: str | None = None
    secret_env: str = "DIGEST_SECRET_KEY"

    @property
    def secret(self) -> str | None:
        return os.environ.get(self.secret_env) or None


@dataclass(frozen=True)
class WebConfig:
    """The subscriber-facing web app (`digest serve`): webhook verification and rate limits."""

    sendgrid_webhook_public_key_env: str = "SENDGRID_WEBHOOK_PUBLIC_KEY"
    sendgrid_webhook_max_age_seconds: int = 600
    sendgrid_webhook_allow_unsigned: bool = False
    token_requests_per_minute: float = 30.0  # per client IP on token links; 0 = no limit
    proxy_hops: int = 0  # reverse proxies in front whose X-Forwarded-For is trusted

    @property
    def sendgrid_webhook_public_key(self) -> str | None:
        return os.environ.get(self.sendgrid_webhook_public_key_env) or None


@dataclass(frozen=True)
class Config:
    path: Path | None
    newsletters: dict[str, NewsletterConfig]
    selection: SelectionWeights = field(default_factory=SelectionWeights)
    site: SiteConfig = field(default_factory=SiteConfig)
    smtp: SmtpConfig = field(default_factory=SmtpConfig)
    sendgrid: SendGridConfig = field(default_factory=SendGridConfig)
    outbox: OutboxConfig = field(default_factory=OutboxConfig)
    segments: dict[str, str] = field(default_factory=dict)
    templates_dir: Path | None = None
    web: WebConfig = field(default_factory=WebConfig)

    @property
    def database_url(self) -> str:
        return database_url()

    def newsletter(self, newsletter_id: str) -> NewsletterConfig:
        try:
            return self.newsletters[newsletter_id]
        except KeyError:
            known = ", ".join(sorted(self.newsletters)) or "none"
            raise ConfigError(
                f"unknown newsletter {newsletter_id!r} (configured: {known})"
            ) from None


def database_url() -> str:
    return os.environ.get("DIGEST_DATABASE_URL") or DEFAULT_DATABASE_URL


def config_path(explicit: str | Path | None = None) -> Path:
    raw = explicit or os.environ.get("DIGEST_CONFIG") or "digest.toml"
    return Path(raw)


def load_config(path: str | Path | None = None) -> Config:
    """Read and validate the config file; every problem is one ConfigError naming file and key."""
    p = config_path(path)
    try:
        with p.open("rb") as handle:
            data = handle.read(MAX_CONFIG_FILE_BYTES + 1)
        if len(data) > MAX_CONFIG_FILE_BYTES:
            raise ConfigError(f"{p}: larger than {MAX_CONFIG_FILE_BYTES // 1024} KB; not a config")
        raw = tomllib.loads(data.decode("utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"{p}: config file not found (pass --config or set DIGEST_CONFIG; "
            "digest.example.toml is a commented example)"
        ) from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p}: not valid TOML: {e}") from None
    except OSError as e:
        raise ConfigError(f"{p}: cannot read config: {e.strerror}") from None
    return parse_config(raw, p)


def parse_config(raw: dict[str, Any], path: Path | None = None) -> Config:
    r = _Reader(str(path) if path else "config", raw, "")
    r.allow("newsletters", "selection", "site", "providers", "segments", "templates_dir", "web")
    newsletters_tbl = r.table("newsletters", required=True)
    if not newsletters_tbl.raw:
        raise newsletters_tbl.error("", "declare at least one newsletter")
    newsletters = {}
    for nid in newsletters_tbl.raw:
        if not _ID.match(nid):
            raise newsletters_tbl.error(
                nid, "newsletter id must be lowercase letters, digits, '-' or '_'"
            )
        newsletters[nid] = _newsletter(nid, newsletters_tbl.table(nid, required=True))

    sel = r.table("selection")
    sel.allow(*SelectionWeights.__dataclass_fields__)
    selection = SelectionWeights(
        half_life_hours=sel.number("half_life_hours", 12.0, minimum=0.1),
        boost=sel.number("boost", 2.0, minimum=1.0),
        popularity_floor=sel.number("popularity_floor", 10.0, minimum=0.0),
        title_similarity=sel.number("title_similarity", 0.6, minimum=0.0, maximum=1.0),
        dek_similarity=sel.number("dek_similarity", 0.75, minimum=0.0, maximum=1.0),
    )

    site_t = r.table("site")
    site_t.allow("base_url", "postal_address", "unsubscribe_mailto", "secret_env")
    base_url = site_t.string("base_url", "http://127.0.0.1:8000").rstrip("/")
    if not re.fullmatch(r"https?://[^/\s]+\S*", base_url):
        raise site_t.error("base_url", "must be an http:// or https:// URL")
    site = SiteConfig(
        base_url=base_url,
        postal_address=site_t.string("postal_address", SiteConfig.postal_address, multiline=True),
        unsubscribe_mailto=site_t.address("unsubscribe_mailto"),
        secret_env=site_t.string("secret_env", "DIGEST_SECRET_KEY"),
    )

    prov = r.table("providers")
    prov.allow(*PROVIDERS)
    smtp_t = prov.table("smtp")
    smtp_t.allow(*SmtpConfig.__dataclass_fields__)
    security = smtp_t.string("security", "none")
    if security not in ("none", "starttls", "tls"):
        raise smtp_t.error("security", "must be one of none, starttls, tls")
    smtp = SmtpConfig(
        host=smtp_t.string("host", "127.0.0.1"),
        port=smtp_t.integer("port", 465 if security == "tls" else 25, minimum=1, maximum=65535),
        security=security,
        username=smtp_t.optional_string("username"),
        password_env=smtp_t.string("password_env", "DIGEST_SMTP_PASSWORD"),
        timeout=smtp_t.number("timeout", 30.0, minimum=0.1),
        rate=smtp_t.number("rate", 0.0, minimum=0.0),
        connections=smtp_t.integer("connections", 1, minimum=1, maximum=32),
    )
    sg_t = prov.table("sendgrid")
    sg_t.allow(*SendGridConfig.__dataclass_fields__)
    sendgrid = SendGridConfig(
        host=sg_t.string("host", "https://api.sendgrid.com").rstrip("/"),
        api_key_env=sg_t.string("api_key_env", "SENDGRID_API_KEY"),
        timeout=sg_t.number("timeout", 10.0, minimum=0.1),
        rate=sg_t.number("rate", 0.0, minimum=0.0),
        batch_size=sg_t.integer("batch_size", 1000, minimum=1, maximum=1000),
        in_flight=sg_t.integer("in_flight", 2, minimum=1, maximum=16),
    )
    ob_t = prov.table("outbox")
    ob_t.allow("dir", "rate")
    outbox = OutboxConfig(
        dir=Path(ob_t.string("dir", ".var/outbox")), rate=ob_t.number("rate", 0.0, minimum=0.0)
    )

    seg_t = r.table("segments")
    for name in seg_t.raw:
        if line_problem(name) or not name.strip():
            raise seg_t.error(repr(name), "a segment name must be one line of text")
    segments = {name: seg_t.string(name, required=True, multiline=True) for name in seg_t.raw}
    for nl in newsletters.values():
        for i, block in enumerate(nl.blocks):
            if block.segment not in segments:
                known = ", ".join(sorted(segments)) or "none"
                raise r.error(
                    f"newsletters.{nl.id}.blocks[{i}].segment",
                    f"unknown segment {block.segment!r} (configured in [segments]: {known})",
                )

    templates_dir = r.optional_string("templates_dir")
    tdir = None
    if templates_dir:
        tdir = Path(templates_dir)
        if path is not None and not tdir.is_absolute():
            tdir = path.parent / tdir
        if not tdir.is_dir():
            raise r.error("templates_dir", f"{tdir} is not a folder")
    web_t = r.table("web")
    web_t.allow(*WebConfig.__dataclass_fields__)
    web = WebConfig(
        sendgrid_webhook_public_key_env=web_t.string(
            "sendgrid_webhook_public_key_env", WebConfig.sendgrid_webhook_public_key_env
        ),
        sendgrid_webhook_max_age_seconds=web_t.integer(
            "sendgrid_webhook_max_age_seconds", 600, minimum=1
        ),
        sendgrid_webhook_allow_unsigned=web_t.boolean("sendgrid_webhook_allow_unsigned", False),
        token_requests_per_minute=web_t.number("token_requests_per_minute", 30.0, minimum=0.0),
        proxy_hops=web_t.integer("proxy_hops", 0, minimum=0, maximum=10),
    )
    return Config(
        path=path,
        newsletters=newsletters,
        selection=selection,
        site=site,
        smtp=smtp,
        sendgrid=sendgrid,
        outbox=outbox,
        segments=segments,
        templates_dir=tdir,
        web=web,
    )


def _newsletter(nid: str, t: _Reader) -> NewsletterConfig:
    t.allow(
        "title",
        "from_email",
        "from_name",
        "reply_to",
        "sections",
        "timezone",
        "send_time",
        "lookback_hours",
        "provider",
        "strict_sections",
        "subject",
        "preheader",
        "description",
        "double_opt_in",
        "local_time_delivery",
        "utm",
        "gates",
        "catch_up_hours",
        "blocks",
    )
    title = t.string("title", required=True)
    from_email = t.address("from_email", required=True)
    assert from_email is not None
    tz = t.string("timezone", "UTC")
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a name too long
        raise t.error(
            "timezone", f"{tz!r} is not an IANA time zone (e.g. America/New_York)"
        ) from None
    send_raw = t.string("send_time", "06:00")
    m = re.fullmatch(r"([01]?\d|2[0-3]):([0-5]\d)", send_raw)
    if not m:
        raise t.error("send_time", f"{send_raw!r} is not a 24-hour HH:MM time")
    provider = t.string("provider", "outbox")
    if provider not in PROVIDERS:
        raise t.error("provider", f"{provider!r} is not one of {', '.join(PROVIDERS)}")

    raw_sections = t.raw.get("sections")
    if not isinstance(raw_sections, list) or not raw_sections:
        raise t.error(
            "sections", "must be a non-empty array of tables ({name = ..., stories = ...})"
        )
    sections: list[SectionConfig] = []
    seen: set[str] = set()
    for i, item in enumerate(raw_sections):
        where = f"sections[{i}]"
        if isinstance(item, str):
            item = {"name": item}
        if not isinstance(item, dict):
            raise t.error(where, 'must be a table like {name = "News", stories = 3}')
        s = _Reader(t.file, item, f"{t.prefix}{where}.")
        s.allow("name", "stories", "min")
        name = s.string("name", required=True).strip()
        if not name:
            raise s.error("name", "must not be empty")
        if name.casefold() in seen:
            raise s.error("name", f"section {name!r} is listed twice")
        seen.add(name.casefold())
        stories = s.integer("stories", 3, minimum=1, maximum=50)
        minimum = s.integer("min", 0, minimum=0, maximum=stories)
        sections.append(SectionConfig(name=name, stories=stories, min=minimum))

    utm = None
    if "utm" in t.raw:
        u = t.table("utm")
        u.allow("source", "medium", "campaign")
        utm = UtmConfig(
            source=u.string("source", "digest"),
            medium=u.string("medium", "email"),
            campaign=u.string("campaign", "{newsletter}-{date}"),
        )
    g = t.table("gates")
    g.allow(*GateConfig.__dataclass_fields__)
    gates = GateConfig(
        max_article_age_hours=g.number("max_article_age_hours", 24.0, minimum=0.1),
        enforce_section_minimums=g.boolean("enforce_section_minimums", True),
        refuse_repeat=g.boolean("refuse_repeat", True),
    )
    return NewsletterConfig(
        id=nid,
        title=title,
        from_email=from_email,
        from_name=t.string("from_name", title),
        reply_to=t.address("reply_to"),
        sections=tuple(sections),
        timezone=tz,
        send_time=time(int(m.group(1)), int(m.group(2))),
        lookback_hours=t.number("lookback_hours", 24.0, minimum=1.0, maximum=24.0 * 14),
        provider=provider,
        strict_sections=t.boolean("strict_sections", False),
        subject=t.string("subject", "{title}: {lead}"),
        preheader=t.string("preheader", "{headlines}"),
        description=t.string("description", "", multiline=True),
        double_opt_in=t.boolean("double_opt_in", False),
        local_time_delivery=t.boolean("local_time_delivery", False),
        utm=utm,
        gates=gates,
        catch_up_hours=t.number("catch_up_hours", 6.0, minimum=0.0),
        blocks=_blocks(t),
    )


def _blocks(t: _Reader) -> tuple[BlockConfig, ...]:
    raw = t.raw.get("blocks", [])
    if not isinstance(raw, list):
        raise t.error("blocks", "must be an array of tables ([[newsletters.ID.blocks]])")
    blocks = []
    for i, item in enumerate(raw):
        where = f"blocks[{i}]"
        if not isinstance(item, dict):
            raise t.error(where, 'must be a table like {segment = "vip", title = ..., text = ...}')
        b = _Reader(t.file, item, f"{t.prefix}{where}.")
        b.allow("segment", "title", "text", "link", "link_text", "position")
        link = b.optional_string("link")
        if link is not None and not re.match(r"^https?://[^/\s]+\S*$", link):
            raise b.error("link", f"{link!r} is not an http:// or https:// URL")
        position = b.string("position", "top")
        if position not in BLOCK_POSITIONS:
            raise b.error("position", f"{position!r} is not one of {', '.join(BLOCK_POSITIONS)}")
        blocks.append(
            BlockConfig(
                segment=b.string("segment", required=True),
                title=b.string("title", required=True),
                text=b.string("text", required=True, multiline=True),
                link=link,
                link_text=b.string("link_text", "Learn more"),
                position=position,
            )
        )
    return tuple(blocks)


class _Reader:
    """Typed access to one TOML table, raising ConfigError with file and dotted key."""

    def __init__(self, file: str, raw: dict[str, Any], prefix: str) -> None:
        self.file = file
        self.raw = raw
        self.prefix = prefix

    def error(self, key: str, problem: str) -> ConfigError:
        where = f"{self.prefix}{key}".rstrip(".") or "(top level)"
        if line_problem(where):  # a quoted TOML key can hold anything: show it escaped
            where = where.encode("unicode_escape").decode("ascii")
        return ConfigError(f"{self.file}: {where}: {problem}")

    def allow(self, *keys: str) -> None:
        for k in self.raw:
            if k not in keys:
                raise self.error(k, f"unknown key (expected one of: {', '.join(sorted(keys))})")

    def table(self, key: str, required: bool = False) -> _Reader:
        v = self.raw.get(key)
        if v is None:
            if required:
                raise self.error(key, "missing table")
            v = {}
        if not isinstance(v, dict):
            raise self.error(key, "must be a table")
        return _Reader(self.file, v, f"{self.prefix}{key}.")

    def string(
        self,
        key: str,
        default: str | None = None,
        required: bool = False,
        *,
        multiline: bool = False,
    ) -> str:
        """A string; one line unless `multiline` (names, titles, addresses and subjects end up
        in headers), and never with a control character other than a line break or tab."""
        v = self.raw.get(key)
        if v is None:
            if required or default is None:
                raise self.error(key, "missing (required)")
            return default
        if not isinstance(v, str):
            raise self.error(key, f"must be a string, not {type(v).__name__}")
        problem = text_problem(v) if multiline else line_problem(v)
        if problem:
            kind = "text" if multiline else "one line of text"
            raise self.error(key, f"must be {kind}: it {problem}")
        return v

    def optional_string(self, key: str) -> str | None:
        if self.raw.get(key) is None:
            return None
        return self.string(key) or None

    def address(self, key: str, required: bool = False) -> str | None:
        """An email address for a header: local@domain, no spaces, brackets or commas."""
        v = self.string(key, required=required) if required else self.optional_string(key)
        if v is not None and not _PLAIN_ADDRESS.fullmatch(v):
            raise self.error(key, f"{v!r} is not an email address (like news@example.com)")
        return v

    def number(
        self, key: str, default: float, minimum: float | None = None, maximum: float | None = None
    ) -> float:
        v = self.raw.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise self.error(key, f"must be a number, not {type(v).__name__}")
        if not math.isfinite(v):
            raise self.error(key, f"must be a finite number, not {v}")
        if minimum is not None and v < minimum:
            raise self.error(key, f"must be at least {minimum}, got {v}")
        if maximum is not None and v > maximum:
            raise self.error(key, f"must be at most {maximum}, got {v}")
        return float(v)

    def integer(
        self, key: str, default: int, minimum: int | None = None, maximum: int | None = None
    ) -> int:
        v = self.raw.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int):
            raise self.error(key, f"must be a whole number, not {v!r}")
        if minimum is not None and v < minimum:
            raise self.error(key, f"must be at least {minimum}, got {v}")
        if maximum is not None and v > maximum:
            raise self.error(key, f"must be at most {maximum}, got {v}")
        return v

    def boolean(self, key: str, default: bool) -> bool:
        v = self.raw.get(key, default)
        if not isinstance(v, bool):
            raise self.error(key, f"must be true or false, not {v!r}")
        return v
