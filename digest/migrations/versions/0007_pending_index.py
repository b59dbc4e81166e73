"""ledger: a partial index of pending rows replaces the index on (edition, state, variant, id)

A claimed row now leaves the index once instead of moving within it at every change of state.

Revision ID: 0007
Revises: 0006
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_PENDING = sa.text("state = 'pending'")


def upgrade() -> None:
    op.create_index(
        "ix_deliveries_pending",
        "deliveries",
        ["edition_id", "variant", "id"],
        unique=False,
        sqlite_where=_PENDING,
        postgresql_where=_PENDING,
    )
    op.drop_index("ix_deliveries_edition_state", table_name="deliveries")


def downgrade() -> None:
    op.create_index(
        "ix_deliveries_edition_state",
        "deliveries",
        ["edition_id", "state", "variant", "id"],
        unique=False,
    )
    op.drop_index("ix_deliveries_pending", table_name="deliveries")
