"""Bounces and complaints that come back by mail (SMTP senders): VERP return paths (verp),
reading DSNs, ARF reports and plain-text bounces (parse), applying them to the ledger and the
suppression list (apply), and what was recorded (models)."""
