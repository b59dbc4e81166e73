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
from digest.i18n import Language, has_catalog, parse_language, shipped_languages
from digest.limits import MAX_CONFIG_FILE_BYTES
from digest.text import line_problem, text_problem

DEFAULT_DATABASE_URL = "sqlite:///.var/digest.db"
PROVIDERS = ("outbox", "smtp", "sendgrid")
_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DOMAIN = re.compile(rf"^{_LABEL}(?:\.{_LABEL})+\.?$")
_SELECTOR = re.compile(rf"^{_LABEL}(?:\.{_LABEL})*$")
_ADDRESS = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@" + _DOMAIN.pattern[1:])
_FEEDBACK_FIELD = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
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
    # ranking = "blend": the share of the newsroom's rank in the blended value (the rest is
    # the popularity score, relative to the section's best).
    editorial_weight: float = 0.5


@dataclass(frozen=True)
class AbTestConfig:
    """Two to four subjects: a sample (a fraction below 1, or a count) split evenly, then
    after `wait_minutes` the winner by unique click rate goes to everyone else."""

    subjects: tuple[str, ...]
    sample: float = 0.2
    wait_minutes: float = 120.0
    min_sample: int = 100  # recipients per arm below which the first subject wins


@dataclass(frozen=True)
class ClickSignalConfig:
    """Recent click rates of sections and topics adjust tomorrow's scores (digest.signal)."""

    editions: int = 7  # how many recent editions count
    weight: float = 0.5  # how far a rate ratio moves a score (0 = not at all)
    floor: float = 0.6  # no section's multiplier goes below this
    ceiling: float = 1.6
    exploration: float = 0.25  # share of each section's slots kept for stories with no history
    min_delivered: int = 50  # editions sent to fewer readers are not evidence


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
    link_text: str | None = None  # None: "Learn more" in the newsletter's language


BLOCK_POSITIONS = ("top", "bottom")
_COLOUR = re.compile(r"^#(?:[0-9a-fA-F]{3}|[0-9a-fA-F]{6})$")
_HTTP_URL = re.compile(r"^https?://[^/\s]+\S*$")


@dataclass(frozen=True)
class LogoConfig:
    """The masthead logo, shown instead of the title (which becomes its alt text)."""

    url: str
    width: int
    height: int | None = None  # None: scaled from width (give it so clients reserve the space)
    alt: str = ""


# How a section's stories are ordered: see README "Editions: how stories are picked".
RANKINGS = ("popularity", "editorial", "blend")
APPROVALS = ("none", "required")


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
    language: str = "en"  # BCP 47
    in_brief: bool = False
    brand_color: str | None = None  # "#rrggbb"
    logo: LogoConfig | None = None

    @property
    def lang(self) -> Language:
        return parse_language(self.language)

    ranking: str = "popularity"
    # "required": unattended sends wait for `digest edition approve` (only by `approvers`,
    # when listed).
    approval: str = "none"
    approvers: tuple[str, ...] = ()
    proof_to: tuple[str, ...] = ()  # default addresses of `digest proof`

    # --- what readers read (issue 15): click tracking, A/B subjects, the click signal ---
    track_clicks: bool = False
    track_opens: bool = False  # unreliable (Apple Mail Privacy Protection): off by default
    ab_test: AbTestConfig | None = None
    click_signal: ClickSignalConfig | None = None

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
    # The last field of every Feedback-ID (Gmail's SenderId); default: the From domain.
    sender_id: str | None = None

    @property
    def secret(self) -> str | None:
        return os.environ.get(self.secret_env) or None


@dataclass(frozen=True)
class DkimKeyConfig:
    """One DKIM key: its selector and where the private key is (a PEM file, or an environment
    variable holding the PEM or, for Ed25519, the base64 seed as dknewkey writes it)."""

    selector: str
    key_file: Path | None = None
    key_env: str | None = None

    @property
    def source(self) -> str:
        return f"key_file {self.key_file}" if self.key_file else f"${self.key_env}"

    def read(self) -> str:
        """The private key text; ConfigError naming the file or variable otherwise."""
        if self.key_file is not None:
            try:
                return self.key_file.read_text(encoding="ascii")
            except FileNotFoundError:
                raise ConfigError(
                    f"dkim: selector {self.selector!r}: key_file {self.key_file} does not exist"
                ) from None
            except (OSError, UnicodeDecodeError) as e:
                why = e.strerror if isinstance(e, OSError) else "not a PEM text file"
                raise ConfigError(
                    f"dkim: selector {self.selector!r}: cannot read key_file {self.key_file}: {why}"
                ) from None
        assert self.key_env is not None
        value = os.environ.get(self.key_env, "").strip()
        if not value:
            raise ConfigError(
                f"dkim: selector {self.selector!r}: the environment variable {self.key_env} "
                "(key_env) is not set"
            )
        # An env file keeps one line per variable: a PEM may come with its newlines as \n.
        return value.replace("\\n", "\n")


@dataclass(frozen=True)
class DkimConfig:
    """DKIM signing of SMTP and outbox mail (SendGrid signs with its own domain setup).
    `domain` is d= of every signature; None: each newsletter's From domain."""

    keys: tuple[DkimKeyConfig, ...] = ()
    domain: str | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.keys)


@dataclass(frozen=True)
class BounceConfig:
    """Where SMTP bounces go and how `digest bounces` treats them."""

    # Envelope sender (MAIL FROM) of SMTP mail; None: the newsletter's from_email.
    return_path: str | None = None
    # VERP: each message's envelope sender names its ledger row (local+ROW-TAG@domain).
    verp: bool = False
    delimiter: str = "+"
    # Soft bounces of this many different messages within soft_bounce_days suppress.
    soft_bounce_limit: int = 3
    soft_bounce_days: float = 30.0


@dataclass(frozen=True)
class DeferralConfig:
    """[deferral]: when a recipient refused with a temporary answer is tried again."""

    first_retry_minutes: float = 5.0  # then three times longer at each step…
    max_backoff_hours: float = 4.0  # …up to this
    max_age_hours: float = 72.0  # refused this long after the first deferral: failed


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
    locales_dir: Path | None = None
    dkim: DkimConfig = field(default_factory=DkimConfig)
    bounces: BounceConfig = field(default_factory=BounceConfig)
    deferral: DeferralConfig = field(default_factory=DeferralConfig)

    @property
    def database_url(self) -> str:
        return database_url()

    @property
    def common_timezone(self) -> str | None:
        """The newsletters' time zone when they all share one (ingest reads a date without a
        time as midnight there), else None."""
        zones = {nl.timezone for nl in self.newsletters.values()}
        return zones.pop() if len(zones) == 1 else None

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
    )
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
        editorial_weight=sel.number("editorial_weight", 0.5, minimum=0.0, maximum=1.0),
    )

    site_t = r.table("site")
    site_t.allow("base_url", "postal_address", "unsubscribe_mailto", "secret_env", "sender_id")
    base_url = site_t.string("base_url", "http://127.0.0.1:8000").rstrip("/")
    if not re.fullmatch(r"https?://[^/\s]+\S*", base_url):
        raise site_t.error("base_url", "must be an http:// or https:// URL")
    site = SiteConfig(
        base_url=base_url,
        postal_address=site_t.string("postal_address", SiteConfig.postal_address, multiline=True),
        unsubscribe_mailto=site_t.address("unsubscribe_mailto"),
        secret_env=site_t.string("secret_env", "DIGEST_SECRET_KEY"),
        sender_id=site_t.optional_string("sender_id"),
    )
    if site.sender_id is not None and not _FEEDBACK_FIELD.match(site.sender_id):
        raise site_t.error(
            "sender_id", "letters, digits, '.', '_' or '-' only (a field of Feedback-ID)"
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

    tdir = r.folder("templates_dir", path)
    ldir = r.folder("locales_dir", path)
    for nl in newsletters.values():
        if not has_catalog(nl.lang, ldir):
            raise r.error(
                f"newsletters.{nl.id}.language",
                f"no translations for {nl.language!r} (shipped: "
                f"{', '.join(shipped_languages())}; add {nl.lang.locale.language}/LC_MESSAGES/"
                "digest.po under locales_dir)",
            )
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
    )


def _deferral(t: _Reader) -> DeferralConfig:
    t.allow(*DeferralConfig.__dataclass_fields__)
    first = t.number("first_retry_minutes", 5.0, minimum=0.5, maximum=24 * 60.0)
    cap = t.number("max_backoff_hours", 4.0, minimum=0.1, maximum=48.0)
    if cap * 60 < first:
        raise t.error("max_backoff_hours", "must be at least first_retry_minutes")
    return DeferralConfig(
        first_retry_minutes=first,
        max_backoff_hours=cap,
        max_age_hours=t.number("max_age_hours", 72.0, minimum=1.0, maximum=30 * 24.0),
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
        ranking=t.choice("ranking", RANKINGS, "popularity"),
        approval=t.choice("approval", APPROVALS, "none"),
        approvers=t.strings("approvers"),
        proof_to=tuple(_address(t, "proof_to", a) for a in t.strings("proof_to")),
        language=_language(t),
        in_brief=t.boolean("in_brief", False),
        brand_color=_colour(t, "brand_color"),
        logo=_logo(t, title),
        **_engagement(t),
    )


# --- what readers read (issue 15) ------------------------------------------------------------

_ENGAGEMENT_KEYS = ("track_clicks", "track_opens", "ab_test", "click_signal")


def _engagement(t: _Reader) -> dict[str, Any]:
    out: dict[str, Any] = {
        "track_clicks": t.boolean("track_clicks", False),
        "track_opens": t.boolean("track_opens", False),
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


def _language(t: _Reader) -> str:
    try:
        return parse_language(t.string("language", "en")).tag
    except ValueError as e:
        raise t.error("language", str(e)) from None


def _colour(t: _Reader, key: str) -> str | None:
    """#rgb or #rrggbb, returned as lower-case #rrggbb (it goes into CSS: nothing else may)."""
    value = t.optional_string(key)
    if value is None:
        return None
    if not _COLOUR.match(value):
        raise t.error(key, f"{value!r} is not a colour like #9b1c1c or #c00")
    digits = value[1:].lower()
    return "#" + (digits if len(digits) == 6 else "".join(c * 2 for c in digits))


def _logo(t: _Reader, title: str) -> LogoConfig | None:
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


def _address(t: _Reader, key: str, address: str) -> str:
    from email_validator import EmailNotValidError, validate_email

    try:
        return validate_email(address, check_deliverability=False).normalized
    except EmailNotValidError as e:
        raise t.error(key, f"{address!r} is not a valid email address: {e}") from None


def _dkim(t: _Reader, path: Path | None) -> DkimConfig:
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
        k = _Reader(t.file, item, f"{t.prefix}{where}.")
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


def _bounces(t: _Reader) -> BounceConfig:
    t.allow(*BounceConfig.__dataclass_fields__)
    return_path = t.optional_string("return_path")
    if return_path is not None and not _ADDRESS.match(return_path):
        raise t.error("return_path", f"{return_path!r} is not a plain email address")
    delimiter = t.string("delimiter", "+")
    if delimiter not in ("+", "-", "="):
        raise t.error("delimiter", "must be one of +, - or =")
    verp = t.boolean("verp", False)
    if verp and return_path is None:
        raise t.error("verp", "needs return_path (the mailbox bounces come back to)")
    if verp and return_path is not None and delimiter in return_path.partition("@")[0]:
        raise t.error("return_path", f"its local part must not contain the delimiter {delimiter!r}")
    return BounceConfig(
        return_path=return_path,
        verp=verp,
        delimiter=delimiter,
        soft_bounce_limit=t.integer("soft_bounce_limit", 3, minimum=1, maximum=100),
        soft_bounce_days=t.number("soft_bounce_days", 30.0, minimum=1.0, maximum=3650.0),
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
        if link is not None and not _HTTP_URL.match(link):
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
                link_text=b.optional_string("link_text"),
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

    def folder(self, key: str, config_path: Path | None) -> Path | None:
        """An existing folder, relative to the config file."""
        raw = self.optional_string(key)
        if not raw:
            return None
        folder = Path(raw)
        if config_path is not None and not folder.is_absolute():
            folder = config_path.parent / folder
        if not folder.is_dir():
            raise self.error(key, f"{folder} is not a folder")
        return folder

    def choice(self, key: str, choices: tuple[str, ...], default: str) -> str:
        value = self.string(key, default)
        if value not in choices:
            raise self.error(key, f"{value!r} is not one of {', '.join(choices)}")
        return value

    def strings(self, key: str) -> tuple[str, ...]:
        v = self.raw.get(key, [])
        if not isinstance(v, list) or not all(isinstance(x, str) and x.strip() for x in v):
            raise self.error(key, 'must be an array of non-empty strings (["a", "b"])')
        return tuple(x.strip() for x in v)

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
