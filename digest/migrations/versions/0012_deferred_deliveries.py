"""ledger: a `deferred` state for recipients whose server said "try again later"

A row refused with a temporary answer that concerns that recipient alone (SMTP 4xx at RCPT or
after the message, a SendGrid 400 naming the address) waits for `next_attempt_at`; the first
such answer's time is `deferred_since` (the maximum age counts from it) and `deferrals` picks
the next step of the backoff. A partial index finds an edition's due rows.

Revision ID: 0012
Revises: 0009
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_DEFERRED = sa.text("state = 'deferred'")


def upgrade() -> None:
    with op.batch_alter_table("deliveries") as batch:
        batch.add_column(
            sa.Column("deferrals", sa.Integer(), nullable=False, server_default=sa.text("0"))
        )
        batch.add_column(sa.Column("deferred_since", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index(
        "ix_deliveries_deferred",
        "deliveries",
        ["edition_id", "next_attempt_at"],
        unique=False,
        sqlite_where=_DEFERRED,
        postgresql_where=_DEFERRED,
    )


def downgrade() -> None:
    op.drop_index("ix_deliveries_deferred", table_name="deliveries")
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_column("next_attempt_at")
        batch.drop_column("deferred_since")
        batch.drop_column("deferrals")
