"""Reading digest.toml into the values of digest.config: every key checked, every problem one
ConfigError naming the file and the dotted key. The defaults are the dataclasses' own."""

from __future__ import annotations

import ipaddress
import re
from datetime import time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from digest.config import (
    APPROVALS,
    BLOCK_POSITIONS,
    PROVIDERS,
    RANKINGS,
    AbTestConfig,
    BlockConfig,
    BounceConfig,
    ClickSignalConfig,
    Config,
    DeferralConfig,
    DkimConfig,
    DkimKeyConfig,
    GateConfig,
    LogoConfig,
    MetricsConfig,
    NewsletterConfig,
    OutboxConfig,
    SectionConfig,
    SelectionWeights,
    SendGridConfig,
    SiteConfig,
    SmtpConfig,
    UtmConfig,
    WebConfig,
)
from digest.config_table import Reader
from digest.i18n import has_catalog, parse_language, shipped_languages
from digest.text import line_problem

_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DOMAIN = re.compile(rf"^{_LABEL}(?:\.{_LABEL})+\.?$")
_SELECTOR = re.compile(rf"^{_LABEL}(?:\.{_LABEL})*$")
_ADDRESS = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@" + _DOMAIN.pattern[1:])
_FEEDBACK_FIELD = re.compile(r"^[A-Za-z0-9._-]{1,64}$")

_COLOUR = re.compile(r"^#(?:[0-9a-fA-F]{3}|[0-9a-fA-F]{6})$")
_HTTP_URL = re.compile(r"^https?://[^/\s]+\S*$")


def read_config(raw: dict[str, Any], path: Path | None = None) -> Config:
    r = Reader(str(path) if path else "config", raw, "")
    r.allow(
        "newsletters",
        "selection",
        "site",
        "providers",
        "segments",
        "templates_dir",
        "locales_dir",
        "web",
        "dkim",
        "bounces",
        "deferral",
        "metrics",
    )
    # Read in this order, so a file with several problems names the same one first as before.
    newsletters = _newsletters(r.table("newsletters", required=True))
    selection = _selection(r.table("selection"))
    site = _site(r.table("site"))
    prov = r.table("providers")
    prov.allow(*PROVIDERS)
    smtp = _smtp(prov.table("smtp"))
    sendgrid = _sendgrid(prov.table("sendgrid"))
    outbox = _outbox(prov.table("outbox"))
    segments = _segments(r, newsletters)
    tdir = r.folder("templates_dir", path)
    ldir = r.folder("locales_dir", path)
    _check_catalogs(r, newsletters, ldir)
    web = _web(r.table("web"))
    return Config(
        path=path,
        dkim=_dkim(r.table("dkim"), path),
        bounces=_bounces(r.table("bounces")),
        newsletters=newsletters,
        selection=selection,
        site=site,
        smtp=smtp,
        sendgrid=sendgrid,
        outbox=outbox,
        segments=segments,
        templates_dir=tdir,
        web=web,
        locales_dir=ldir,
        deferral=_deferral(r.table("deferral")),
        metrics=_metrics(r.table("metrics")),
    )


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _metrics(t: Reader) -> MetricsConfig:
    t.allow(*MetricsConfig.__dataclass_fields__)
    d = MetricsConfig
    host = t.string("host", d.host)
    if not _SELECTOR.match(host) and not _is_ip(host):
        raise t.error("host", f"{host!r} is not an IP address or host name (e.g. 127.0.0.1)")
    port = t.integer("port", 0, minimum=1, maximum=65535) if "port" in t.raw else None
    return MetricsConfig(
        port=port,
        host=host,
        token_env=t.string("token_env", d.token_env),
        cache_seconds=t.number("cache_seconds", d.cache_seconds, minimum=0.0, maximum=3600.0),
        ledger_days=t.integer("ledger_days", d.ledger_days, minimum=1, maximum=400),
    )


def _deferral(t: Reader) -> DeferralConfig:
    d = DeferralConfig
    t.allow(*DeferralConfig.__dataclass_fields__)
    first = t.number("first_retry_minutes", d.first_retry_minutes, minimum=0.5, maximum=24 * 60.0)
    cap = t.number("max_backoff_hours", d.max_backoff_hours, minimum=0.1, maximum=48.0)
    if cap * 60 < first:
        raise t.error("max_backoff_hours", "must be at least first_retry_minutes")
    return DeferralConfig(
        first_retry_minutes=first,
        max_backoff_hours=cap,
        max_age_hours=t.number("max_age_hours", d.max_age_hours, minimum=1.0, maximum=30 * 24.0),
    )


def _newsletters(t: Reader) -> dict[str, NewsletterConfig]:
    if not t.raw:
        raise t.error("", "declare at least one newsletter")
    newsletters = {}
    for nid in t.raw:
        if not _ID.match(nid):
            raise t.error(nid, "newsletter id must be lowercase letters, digits, '-' or '_'")
        newsletters[nid] = _newsletter(nid, t.table(nid, required=True))
    return newsletters


def _selection(sel: Reader) -> SelectionWeights:
    sel.allow(*SelectionWeights.__dataclass_fields__)
    d = SelectionWeights
    return SelectionWeights(
        half_life_hours=sel.number("half_life_hours", d.half_life_hours, minimum=0.1),
        boost=sel.number("boost", d.boost, minimum=1.0),
        popularity_floor=sel.number("popularity_floor", d.popularity_floor, minimum=0.0),
        title_similarity=sel.number(
            "title_similarity", d.title_similarity, minimum=0.0, maximum=1.0
        ),
        dek_similarity=sel.number("dek_similarity", d.dek_similarity, minimum=0.0, maximum=1.0),
        editorial_weight=sel.number(
            "editorial_weight", d.editorial_weight, minimum=0.0, maximum=1.0
        ),
    )


def _site(site_t: Reader) -> SiteConfig:
    site_t.allow("base_url", "postal_address", "unsubscribe_mailto", "secret_env", "sender_id")
    d = SiteConfig
    base_url = site_t.string("base_url", d.base_url).rstrip("/")
    if not re.fullmatch(r"https?://[^/\s]+\S*", base_url):
        raise site_t.error("base_url", "must be an http:// or https:// URL")
    site = SiteConfig(
        base_url=base_url,
        postal_address=site_t.string("postal_address", d.postal_address, multiline=True),
        unsubscribe_mailto=site_t.address("unsubscribe_mailto"),
        secret_env=site_t.string("secret_env", d.secret_env),
        sender_id=site_t.optional_string("sender_id"),
    )
    if site.sender_id is not None and not _FEEDBACK_FIELD.match(site.sender_id):
        raise site_t.error(
            "sender_id", "letters, digits, '.', '_' or '-' only (a field of Feedback-ID)"
        )
    return site


def _smtp(smtp_t: Reader) -> SmtpConfig:
    smtp_t.allow(*SmtpConfig.__dataclass_fields__)
    d = SmtpConfig
    security = smtp_t.string("security", d.security)
    if security not in ("none", "starttls", "tls"):
        raise smtp_t.error("security", "must be one of none, starttls, tls")
    port = 465 if security == "tls" else d.port
    return SmtpConfig(
        host=smtp_t.string("host", d.host),
        port=smtp_t.integer("port", port, minimum=1, maximum=65535),
        security=security,
        username=smtp_t.optional_string("username"),
        password_env=smtp_t.string("password_env", d.password_env),
        timeout=smtp_t.number("timeout", d.timeout, minimum=0.1),
        rate=smtp_t.number("rate", d.rate, minimum=0.0),
        connections=smtp_t.integer("connections", d.connections, minimum=1, maximum=32),
    )


def _sendgrid(sg_t: Reader) -> SendGridConfig:
    sg_t.allow(*SendGridConfig.__dataclass_fields__)
    d = SendGridConfig
    return SendGridConfig(
        host=sg_t.string("host", d.host).rstrip("/"),
        api_key_env=sg_t.string("api_key_env", d.api_key_env),
        timeout=sg_t.number("timeout", d.timeout, minimum=0.1),
        rate=sg_t.number("rate", d.rate, minimum=0.0),
        batch_size=sg_t.integer("batch_size", d.batch_size, minimum=1, maximum=1000),
        in_flight=sg_t.integer("in_flight", d.in_flight, minimum=1, maximum=16),
    )


def _outbox(ob_t: Reader) -> OutboxConfig:
    ob_t.allow("dir", "rate")
    d = OutboxConfig
    return OutboxConfig(
        dir=Path(ob_t.string("dir", str(d.dir))), rate=ob_t.number("rate", d.rate, minimum=0.0)
    )


def _segments(r: Reader, newsletters: dict[str, NewsletterConfig]) -> dict[str, str]:
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
    return segments


def _check_catalogs(r: Reader, newsletters: dict[str, NewsletterConfig], ldir: Path | None) -> None:
    for nl in newsletters.values():
        if not has_catalog(nl.lang, ldir):
            raise r.error(
                f"newsletters.{nl.id}.language",
                f"no translations for {nl.language!r} (shipped: "
                f"{', '.join(shipped_languages())}; add {nl.lang.locale.language}/LC_MESSAGES/"
                "digest.po under locales_dir)",
            )


def _web(web_t: Reader) -> WebConfig:
    web_t.allow(*WebConfig.__dataclass_fields__)
    d = WebConfig
    return WebConfig(
        sendgrid_webhook_public_key_env=web_t.string(
            "sendgrid_webhook_public_key_env", d.sendgrid_webhook_public_key_env
        ),
        sendgrid_webhook_max_age_seconds=web_t.integer(
            "sendgrid_webhook_max_age_seconds", d.sendgrid_webhook_max_age_seconds, minimum=1
        ),
        sendgrid_webhook_allow_unsigned=web_t.boolean(
            "sendgrid_webhook_allow_unsigned", d.sendgrid_webhook_allow_unsigned
        ),
        token_requests_per_minute=web_t.number(
            "token_requests_per_minute", d.token_requests_per_minute, minimum=0.0
        ),
        proxy_hops=web_t.integer("proxy_hops", d.proxy_hops, minimum=0, maximum=10),
    )


def _newsletter(nid: str, t: Reader) -> NewsletterConfig:
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
        "language",
        "in_brief",
        "brand_color",
        "logo",
        "ranking",
        "approval",
        "approvers",
        "proof_to",
        *_ENGAGEMENT_KEYS,
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
    d = NewsletterConfig
    provider = t.string("provider", d.provider)
    if provider not in PROVIDERS:
        raise t.error("provider", f"{provider!r} is not one of {', '.join(PROVIDERS)}")
    sections = _sections(t)
    utm = _utm(t.table("utm")) if "utm" in t.raw else None
    gates = _gates(t.table("gates"))
    return NewsletterConfig(
        id=nid,
        title=title,
        from_email=from_email,
        from_name=t.string("from_name", title),
        reply_to=t.address("reply_to"),
        sections=sections,
        timezone=tz,
        send_time=time(int(m.group(1)), int(m.group(2))),
        lookback_hours=t.number("lookback_hours", d.lookback_hours, minimum=1.0, maximum=24.0 * 14),
        provider=provider,
        strict_sections=t.boolean("strict_sections", d.strict_sections),
        subject=t.string("subject", d.subject),
        preheader=t.string("preheader", d.preheader),
        description=t.string("description", d.description, multiline=True),
        double_opt_in=t.boolean("double_opt_in", d.double_opt_in),
        local_time_delivery=t.boolean("local_time_delivery", d.local_time_delivery),
        utm=utm,
        gates=gates,
        catch_up_hours=t.number("catch_up_hours", d.catch_up_hours, minimum=0.0),
        blocks=_blocks(t),
        ranking=t.choice("ranking", RANKINGS, d.ranking),
        approval=t.choice("approval", APPROVALS, d.approval),
        approvers=t.strings("approvers"),
        proof_to=tuple(_address(t, "proof_to", a) for a in t.strings("proof_to")),
        language=_language(t),
        in_brief=t.boolean("in_brief", d.in_brief),
        brand_color=_colour(t, "brand_color"),
        logo=_logo(t, title),
        **_engagement(t),
    )


def _sections(t: Reader) -> tuple[SectionConfig, ...]:
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
        s = Reader(t.file, item, f"{t.prefix}{where}.")
        s.allow("name", "stories", "min")
        name = s.string("name", required=True).strip()
        if not name:
            raise s.error("name", "must not be empty")
        if name.casefold() in seen:
            raise s.error("name", f"section {name!r} is listed twice")
        seen.add(name.casefold())
        stories = s.integer("stories", SectionConfig.stories, minimum=1, maximum=50)
        minimum = s.integer("min", SectionConfig.min, minimum=0, maximum=stories)
        sections.append(SectionConfig(name=name, stories=stories, min=minimum))
    return tuple(sections)


def _utm(u: Reader) -> UtmConfig:
    u.allow("source", "medium", "campaign")
    d = UtmConfig
    return UtmConfig(
        source=u.string("source", d.source),
        medium=u.string("medium", d.medium),
        campaign=u.string("campaign", d.campaign),
    )


def _gates(g: Reader) -> GateConfig:
    g.allow(*GateConfig.__dataclass_fields__)
    d = GateConfig
    return GateConfig(
        max_article_age_hours=g.number(
            "max_article_age_hours", d.max_article_age_hours, minimum=0.1
        ),
        enforce_section_minimums=g.boolean("enforce_section_minimums", d.enforce_section_minimums),
        refuse_repeat=g.boolean("refuse_repeat", d.refuse_repeat),
    )


# --- what readers read (issue 15) ------------------------------------------------------------

_ENGAGEMENT_KEYS = ("track_clicks", "track_opens", "ab_test", "click_signal", "no_repeat_today")


def _engagement(t: Reader) -> dict[str, Any]:
    out: dict[str, Any] = {
        "track_clicks": t.boolean("track_clicks", False),
        "track_opens": t.boolean("track_opens", False),
        "no_repeat_today": t.boolean("no_repeat_today", True),
    }
    if "ab_test" in t.raw:
        a = t.table("ab_test")
        a.allow("subjects", "sample", "wait_minutes", "min_sample")
        subjects = a.strings("subjects")
        if not 2 <= len(subjects) <= 4:
            raise a.error("subjects", f"must list two to four subjects, got {len(subjects)}")
        for subject in subjects:
            if line_problem(subject):
                raise a.error("subjects", f"{subject!r} must be one line of text")
        sample = a.number("sample", 0.2, minimum=0.0)
        if sample <= 0 or (sample >= 1 and sample != int(sample)):
            raise a.error("sample", "must be a fraction (0 < f < 1) or a whole count of readers")
        out["ab_test"] = AbTestConfig(
            subjects=subjects,
            sample=sample,
            wait_minutes=a.number("wait_minutes", 120.0, minimum=0.0, maximum=24.0 * 60),
            min_sample=a.integer("min_sample", 100, minimum=1),
        )
        if not out["track_clicks"]:
            raise t.error("ab_test", "picks its winner by clicks: set track_clicks = true")
    if "click_signal" in t.raw:
        c = t.table("click_signal")
        c.allow(*ClickSignalConfig.__dataclass_fields__)
        floor = c.number("floor", 0.6, minimum=0.0, maximum=1.0)
        out["click_signal"] = ClickSignalConfig(
            editions=c.integer("editions", 7, minimum=1, maximum=90),
            weight=c.number("weight", 0.5, minimum=0.0, maximum=2.0),
            floor=floor,
            ceiling=c.number("ceiling", 1.6, minimum=1.0, maximum=5.0),
            exploration=c.number("exploration", 0.25, minimum=0.0, maximum=1.0),
            min_delivered=c.integer("min_delivered", 50, minimum=1),
        )
    return out


def _language(t: Reader) -> str:
    try:
        return parse_language(t.string("language", NewsletterConfig.language)).tag
    except ValueError as e:
        raise t.error("language", str(e)) from None


def _colour(t: Reader, key: str) -> str | None:
    """#rgb or #rrggbb, returned as lower-case #rrggbb (it goes into CSS: nothing else may)."""
    value = t.optional_string(key)
    if value is None:
        return None
    if not _COLOUR.match(value):
        raise t.error(key, f"{value!r} is not a colour like #9b1c1c or #c00")
    digits = value[1:].lower()
    return "#" + (digits if len(digits) == 6 else "".join(c * 2 for c in digits))


def _logo(t: Reader, title: str) -> LogoConfig | None:
    if "logo" not in t.raw:
        return None
    g = t.table("logo")
    g.allow(*LogoConfig.__dataclass_fields__)
    url = g.string("url", required=True)
    if not _HTTP_URL.match(url):
        raise g.error("url", f"{url!r} is not an http:// or https:// URL")
    if "width" not in g.raw:
        raise g.error("width", "missing (required: the width to show it at, in CSS pixels)")
    return LogoConfig(
        url=url,
        width=g.integer("width", 0, minimum=16, maximum=536),
        height=g.integer("height", 1, minimum=1, maximum=400) if "height" in g.raw else None,
        alt=g.string("alt", title),
    )


def _address(t: Reader, key: str, address: str) -> str:
    from email_validator import EmailNotValidError, validate_email

    try:
        return validate_email(address, check_deliverability=False).normalized
    except EmailNotValidError as e:
        raise t.error(key, f"{address!r} is not a valid email address: {e}") from None


def _dkim(t: Reader, path: Path | None) -> DkimConfig:
    t.allow("domain", "keys")
    domain = t.optional_string("domain")
    if domain is not None and not _DOMAIN.match(domain):
        raise t.error("domain", f"{domain!r} is not a domain name (e.g. news.example.com)")
    raw = t.raw.get("keys", [])
    if not isinstance(raw, list):
        raise t.error("keys", 'must be an array of tables like {selector = "s1", key_file = ...}')
    keys: list[DkimKeyConfig] = []
    for i, item in enumerate(raw):
        where = f"keys[{i}]"
        if not isinstance(item, dict):
            raise t.error(where, 'must be a table like {selector = "s1", key_file = "dkim.pem"}')
        k = Reader(t.file, item, f"{t.prefix}{where}.")
        k.allow("selector", "key_file", "key_env")
        selector = k.string("selector", required=True)
        if not _SELECTOR.match(selector):
            raise k.error("selector", f"{selector!r} is not a DNS label (letters, digits, '-')")
        if any(selector == other.selector for other in keys):
            raise k.error("selector", f"selector {selector!r} is listed twice")
        key_file, key_env = k.optional_string("key_file"), k.optional_string("key_env")
        if (key_file is None) == (key_env is None):
            raise k.error("", "give exactly one of key_file (a PEM file) or key_env")
        file = None
        if key_file is not None:
            file = Path(key_file)
            if path is not None and not file.is_absolute():
                file = path.parent / file
        keys.append(DkimKeyConfig(selector=selector, key_file=file, key_env=key_env))
    return DkimConfig(keys=tuple(keys), domain=domain.lower().rstrip(".") if domain else None)


def _bounces(t: Reader) -> BounceConfig:
    t.allow(*BounceConfig.__dataclass_fields__)
    return_path = t.optional_string("return_path")
    if return_path is not None and not _ADDRESS.match(return_path):
        raise t.error("return_path", f"{return_path!r} is not a plain email address")
    d = BounceConfig
    delimiter = t.string("delimiter", d.delimiter)
    if delimiter not in ("+", "-", "="):
        raise t.error("delimiter", "must be one of +, - or =")
    verp = t.boolean("verp", d.verp)
    if verp and return_path is None:
        raise t.error("verp", "needs return_path (the mailbox bounces come back to)")
    if verp and return_path is not None and delimiter in return_path.partition("@")[0]:
        raise t.error("return_path", f"its local part must not contain the delimiter {delimiter!r}")
    return BounceConfig(
        return_path=return_path,
        verp=verp,
        delimiter=delimiter,
        soft_bounce_limit=t.integer(
            "soft_bounce_limit", d.soft_bounce_limit, minimum=1, maximum=100
        ),
        soft_bounce_days=t.number(
            "soft_bounce_days", d.soft_bounce_days, minimum=1.0, maximum=3650.0
        ),
    )


def _blocks(t: Reader) -> tuple[BlockConfig, ...]:
    raw = t.raw.get("blocks", [])
    if not isinstance(raw, list):
        raise t.error("blocks", "must be an array of tables ([[newsletters.ID.blocks]])")
    blocks = []
    for i, item in enumerate(raw):
        where = f"blocks[{i}]"
        if not isinstance(item, dict):
            raise t.error(where, 'must be a table like {segment = "vip", title = ..., text = ...}')
        b = Reader(t.file, item, f"{t.prefix}{where}.")
        b.allow("segment", "title", "text", "link", "link_text", "position")
        link = b.optional_string("link")
        if link is not None and not _HTTP_URL.match(link):
            raise b.error("link", f"{link!r} is not an http:// or https:// URL")
        position = b.string("position", BlockConfig.position)
        if position not in BLOCK_POSITIONS:
            raise b.error("position", f"{position!r} is not one of {', '.join(BLOCK_POSITIONS)}")
        blocks.append(
            BlockConfig(
                segment=b.string("segment", required=True),
                title=b.string("title", required=True),
                text=b.string("text", required=True, multiline=True),
                link=link,
                link_text=b.optional_string("link_text"),
                position=position,
            )
        )
    return tuple(blocks)
