"""Load and validate digest.toml plus the environment: the one place that reads configuration.

This module holds the values (frozen dataclasses whose defaults are the documented defaults);
digest.config_reader checks a file's keys into them through digest.config_table.

Secrets never live in the file: the file names the environment variable that holds them
(`api_key_env`, `password_env`), and the database URL comes from DIGEST_DATABASE_URL.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from datetime import time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from digest.errors import ConfigError
from digest.i18n import Language, parse_language
from digest.limits import MAX_CONFIG_FILE_BYTES
from digest.providers import NAMES

DEFAULT_DATABASE_URL = "sqlite:///.var/digest.db"
PROVIDERS = NAMES  # the registry in digest.providers is the one list


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
    # A story a reader was sent today in another newsletter of this config is left out of
    # their copy of this one (digest.same_day); false: repeats are fine.
    no_repeat_today: bool = True

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
class MetricsConfig:
    """[metrics]: Prometheus metrics (README "What to monitor"). `digest serve` always has
    /metrics; `digest schedule` serves its own on `port` only when one is given."""

    port: int | None = None  # `digest schedule`'s metrics server; None: none
    host: str = "127.0.0.1"  # where that server listens (loopback: scrape from this machine)
    # When this environment variable is set, /metrics of `digest serve` asks for
    # `Authorization: Bearer <its value>`.
    token_env: str = "DIGEST_METRICS_TOKEN"
    cache_seconds: float = 30.0  # the ledger's counts are read at most this often
    # The ledger's counts cover the editions of this many days (deferred rows live 72 h).
    ledger_days: int = 3

    @property
    def token(self) -> str | None:
        return os.environ.get(self.token_env) or None


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
    metrics: MetricsConfig = field(default_factory=MetricsConfig)

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
    """Validate a parsed TOML document (digest.config_reader does the reading)."""
    from digest.config_reader import read_config

    return read_config(raw, path)
