"""`digest doctor NEWSLETTER`: the DNS records a newsroom must publish (SPF, the DKIM public
keys, DMARC) and a check of the configuration against the bulk-sender rules of Gmail and Yahoo
(February 2024) and Microsoft (May 2025): SPF and DKIM, each aligned with the From domain for
DMARC; a DMARC record; one-click unsubscribe (RFC 8058) signed by DKIM; a From address on a
domain the newsroom controls.

It looks nothing up unless asked (`--dns`), and then only through the `lookup` function given,
which the tests replace with a table. The organisational domain is approximated without the
Public Suffix List (the last two labels, three under a two-letter country code's `co.`, `com.`
and the like), which is right for the domains newsrooms use.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field

from digest.config import Config, NewsletterConfig
from digest.dkim import Key, load_key, signing_domain
from digest.errors import ConfigError
from digest.message import domain_of, feedback_id

# TXT lookup: name → the record strings found there (each record's strings joined).
Lookup = Callable[[str], list[str]]

FREE_MAILBOXES = frozenset(
    [
        "gmail.com",
        "googlemail.com",
        "yahoo.com",
        "yahoo.co.uk",
        "ymail.com",
        "rocketmail.com",
        "outlook.com",
        "hotmail.com",
        "live.com",
        "msn.com",
        "aol.com",
        "icloud.com",
        "me.com",
        "mac.com",
        "gmx.de",
        "gmx.net",
        "web.de",
        "mail.ru",
        "yandex.ru",
        "proton.me",
        "protonmail.com",
        "zoho.com",
    ]
)
_RESERVED_TLDS = ("example", "test", "invalid", "localhost", "local")
_RESERVED_DOMAINS = ("example.com", "example.net", "example.org")
_SECOND_LEVELS = frozenset(
    ["co", "com", "net", "org", "gov", "ac", "edu", "ne", "or", "go", "ltd", "plc"]
)
_DEFAULT_POSTAL = "digest, 1 Example Street, Springfield"


@dataclass(frozen=True)
class Record:
    name: str
    value: str
    why: str
    type: str = "TXT"

    def zone_line(self) -> str:
        """The record as a zone file line; TXT strings of at most 255 characters each."""
        if self.type != "TXT":
            return f"{self.name}.  {self.type}  {self.value}"
        chunks = [self.value[i : i + 255] for i in range(0, len(self.value), 255)] or [""]
        return f"{self.name}.  TXT  {' '.join(f'{chr(34)}{c}{chr(34)}' for c in chunks)}"


@dataclass(frozen=True)
class Check:
    level: str  # ok | warn | fail | info
    text: str


@dataclass
class Diagnosis:
    newsletter: NewsletterConfig
    provider: str
    records: list[Record] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return any(c.level == "fail" for c in self.checks)

    def add(self, level: str, text: str) -> None:
        self.checks.append(Check(level, text))

    def lines(self) -> list[str]:
        nl = self.newsletter
        out = [
            f"{nl.id}: From {nl.from_name} <{nl.from_email}>, provider {self.provider}",
            "",
            "DNS records to publish:",
        ]
        for r in self.records:
            out += [f"  {r.zone_line()}", f"      {r.why}"]
        out += ["", "Bulk-sender rules (Gmail, Yahoo, Microsoft):"]
        labels = {"ok": "ok  ", "warn": "warn", "fail": "FAIL", "info": "note"}
        out += [f"  {labels[c.level]}  {c.text}" for c in self.checks]
        fails = sum(c.level == "fail" for c in self.checks)
        warns = sum(c.level == "warn" for c in self.checks)
        out += ["", f"{fails} problem(s), {warns} warning(s)"]
        return out


def organisational_domain(domain: str) -> str:
    labels = domain.lower().rstrip(".").split(".")
    if len(labels) >= 3 and len(labels[-1]) == 2 and labels[-2] in _SECOND_LEVELS:
        return ".".join(labels[-3:])
    return ".".join(labels[-2:])


def aligned(a: str, b: str) -> bool:
    """DMARC relaxed alignment: the same organisational domain."""
    return organisational_domain(a) == organisational_domain(b)


def diagnose(
    config: Config, newsletter_id: str, *, provider: str | None = None, lookup: Lookup | None = None
) -> Diagnosis:
    nl = config.newsletter(newsletter_id)
    d = Diagnosis(nl, provider or nl.provider)
    from_domain = domain_of(nl.from_email).lower()
    envelope = (config.bounces.return_path or nl.from_email).rpartition("@")[2].lower()
    _from_domain(d, from_domain)
    if d.provider == "sendgrid":
        _sendgrid(d, from_domain)
    else:
        keys = _dkim(d, config, nl, from_domain)
        _spf(d, config, envelope, from_domain)
        if lookup is not None:
            _published_keys(d, keys, signing_domain(config, nl), lookup)
    _dmarc(d, from_domain)
    if lookup is not None:
        _published(d, from_domain, envelope if d.provider != "sendgrid" else None, lookup)
    _unsubscribe(d, config)
    d.add(
        "ok",
        "Feedback-ID on every message (Gmail's feedback loop): "
        f"{feedback_id(config, nl, 'digest', 'YYYYMMDD')}",
    )
    if config.site.postal_address == _DEFAULT_POSTAL:
        d.add("warn", "site.postal_address is the example one: CAN-SPAM wants your postal address")
    return d


def _from_domain(d: Diagnosis, domain: str) -> None:
    if domain in FREE_MAILBOXES:
        d.add(
            "fail",
            f"From {d.newsletter.from_email}: {domain} is a mailbox provider's domain whose "
            "DMARC policy rejects mail sent from anywhere else; use a domain of your own",
        )
    elif domain.rpartition(".")[2] in _RESERVED_TLDS or domain in _RESERVED_DOMAINS:
        d.add("warn", f"From domain {domain} is reserved for examples: no receiver will accept it")
    else:
        d.add("ok", f"From domain {domain} is yours to publish records for")


def _sendgrid(d: Diagnosis, from_domain: str) -> None:
    why = (
        "SendGrid: Settings → Sender Authentication → Authenticate Your Domain shows the "
        "targets of its return path (SPF) and of its two DKIM keys for this domain"
    )
    for name in (
        f"em####.{from_domain}",
        f"s1._domainkey.{from_domain}",
        f"s2._domainkey.{from_domain}",
    ):
        d.records.append(Record(name, "<the target SendGrid shows>", why, type="CNAME"))
        why = "SendGrid, as above"
    d.add(
        "info",
        f"SendGrid signs (DKIM) and bounces for {from_domain} once the domain is authenticated "
        "in SendGrid; [dkim] keys and [bounces] are for SMTP and the outbox only",
    )


def _dkim(d: Diagnosis, config: Config, nl: NewsletterConfig, from_domain: str) -> list[Key]:
    if not config.dkim.enabled:
        d.add(
            "fail",
            "DKIM: no [dkim] keys: Gmail, Yahoo and Microsoft require bulk mail to be DKIM-signed "
            "(generate one: openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048)",
        )
        return []
    domain = signing_domain(config, nl)
    keys: list[Key] = []
    for k in config.dkim.keys:
        try:
            keys.append(load_key(k))
        except ConfigError as e:
            d.add("fail", f"DKIM: {e}")
    for key in keys:
        d.records.append(
            Record(
                f"{key.selector}._domainkey.{domain}",
                key.record(),
                f"DKIM public key of selector {key.selector} ({key.algorithm}"
                + (f", {key.bits} bits)" if key.kind == "rsa" else ")"),
            )
        )
        if key.kind == "rsa" and key.bits < 2048:
            d.add("warn", f"DKIM: the RSA key {key.selector} has {key.bits} bits; use 2048")
    if keys and not any(k.kind == "rsa" for k in keys):
        d.add(
            "warn",
            "DKIM: Ed25519 only; many receivers verify RSA signatures only: add an RSA-2048 key "
            "beside it",
        )
    if not aligned(domain, from_domain):
        d.add(
            "fail",
            f"DKIM: d={domain} is not aligned with the From domain {from_domain}: DMARC needs "
            "them in the same organisational domain (set dkim.domain)",
        )
    elif keys:
        names = ", ".join(f"{k.selector} ({k.algorithm})" for k in keys)
        d.add(
            "ok",
            f"DKIM: every message signed by {names}, d={domain} aligned with {from_domain}; "
            "List-Unsubscribe, List-Unsubscribe-Post and Feedback-ID are signed",
        )
    return keys


def _spf(d: Diagnosis, config: Config, envelope: str, from_domain: str) -> None:
    host = config.smtp.host
    mechanism = _spf_mechanism(host)
    d.records.append(
        Record(
            envelope,
            f"v=spf1 {mechanism} ~all",
            f"SPF: the servers that send as {envelope} (the envelope sender's domain); "
            "merge it with any SPF record already there (one per domain)",
        )
    )
    if d.provider == "outbox":
        d.add("info", "provider outbox: mail is written to files; SPF applies to your SMTP relay")
    if not aligned(envelope, from_domain):
        d.add(
            "warn",
            f"SPF: the envelope sender's domain {envelope} is not aligned with {from_domain}; "
            "DMARC then rests on DKIM alone",
        )
    else:
        d.add("ok", f"SPF: envelope sender domain {envelope} aligned with the From domain")
    if config.bounces.return_path and config.bounces.verp:
        d.add(
            "ok",
            f"bounces: VERP return paths at {config.bounces.return_path}; read them with "
            "`digest bounces --from-mbox`",
        )
    else:
        d.add(
            "warn",
            f"bounces: they return to {config.bounces.return_path or d.newsletter.from_email}; "
            "set [bounces] return_path and verp = true, and run `digest bounces` on that "
            "mailbox so dead addresses stop being mailed",
        )
    if d.provider == "smtp" and config.smtp.security == "none" and not _loopback(host):
        d.add("warn", f"providers.smtp.security = none to {host}: mail and password in clear")


def _spf_mechanism(host: str) -> str:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        if host.lower() in ("localhost", "localhost.localdomain"):
            return "ip4:<your relay's public IP>"
        return f"a:{host}"
    if ip.is_loopback or ip.is_private:
        return "ip4:<your relay's public IP>"
    return f"ip{ip.version}:{ip}"


def _dmarc(d: Diagnosis, from_domain: str) -> None:
    d.records.append(
        Record(
            f"_dmarc.{from_domain}",
            f"v=DMARC1; p=none; rua=mailto:dmarc-reports@{from_domain}; adkim=r; aspf=r",
            "DMARC (required by Gmail and Yahoo, p=none at least): read the reports, then move "
            "to p=quarantine and p=reject",
        )
    )


def _unsubscribe(d: Diagnosis, config: Config) -> None:
    base = config.site.base_url
    host = base.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[0].strip("[]")
    if not base.startswith("https://"):
        d.add(
            "fail",
            f"one-click unsubscribe: site.base_url {base} must be https:// (Gmail and Yahoo "
            "ignore List-Unsubscribe URLs that are not)",
        )
    elif _loopback(host):
        d.add("fail", f"one-click unsubscribe: site.base_url {base} is not reachable from outside")
    else:
        d.add(
            "ok",
            f"one-click unsubscribe (RFC 8058): List-Unsubscribe <{base}/u/…> and "
            "List-Unsubscribe-Post on every edition; POST unsubscribes at once",
        )
    if not config.site.secret:
        d.add("fail", f"${config.site.secret_env} is not set: no unsubscribe link can be signed")
    if config.site.unsubscribe_mailto:
        d.add("ok", f"mailto unsubscribe to {config.site.unsubscribe_mailto} offered as well")


def _loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _published_keys(d: Diagnosis, keys: list[Key], domain: str, lookup: Lookup) -> None:
    for key in keys:
        name = f"{key.selector}._domainkey.{domain}"
        found = _txt(lookup, name)
        published = [_tag(v, "p") for v in found if "p=" in v]
        if key.public_key() in published:
            d.add("ok", f"DNS: {name} publishes this key")
        elif published:
            d.add("fail", f"DNS: {name} publishes another key than the one digest signs with")
        else:
            d.add("fail", f"DNS: no DKIM record at {name}")


def _published(d: Diagnosis, from_domain: str, envelope: str | None, lookup: Lookup) -> None:
    dmarc = [v for v in _txt(lookup, f"_dmarc.{from_domain}") if v.startswith("v=DMARC1")]
    if not dmarc:
        dmarc = [
            v
            for v in _txt(lookup, f"_dmarc.{organisational_domain(from_domain)}")
            if v.startswith("v=DMARC1")
        ]
    if dmarc:
        d.add("ok", f"DNS: DMARC policy p={_tag(dmarc[0], 'p') or '?'} for {from_domain}")
    else:
        d.add("fail", f"DNS: no DMARC record at _dmarc.{from_domain}")
    if envelope is not None:
        spf = [v for v in _txt(lookup, envelope) if v.startswith("v=spf1")]
        if len(spf) == 1:
            d.add("ok", f"DNS: SPF record at {envelope}: {spf[0]}")
        elif spf:
            d.add(
                "fail", f"DNS: {len(spf)} SPF records at {envelope}: receivers treat that as none"
            )
        else:
            d.add("fail", f"DNS: no SPF record at {envelope}")


def _txt(lookup: Lookup, name: str) -> list[str]:
    try:
        return [v.strip() for v in lookup(name)]
    except (OSError, LookupError, ValueError):
        return []


def _tag(record: str, tag: str) -> str:
    for part in record.split(";"):
        key, _, value = part.strip().partition("=")
        if key.strip() == tag:
            return "".join(value.split())
    return ""


def dns_lookup(name: str) -> list[str]:
    """TXT records through the system's resolver (dnspython, which dkimpy brings)."""
    import dns.exception
    import dns.resolver

    try:
        answer = dns.resolver.resolve(name, "TXT", lifetime=5.0)
    except dns.exception.DNSException:
        return []
    return [b"".join(r.strings).decode("utf-8", "replace") for r in answer]
