"""editor's desk: editorial rank, the edit log, overrides, the note, approval, proofs

Revision ID: 0010
Revises: 0007
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("articles") as t:
        t.add_column(sa.Column("rank", sa.Integer(), nullable=True))
        t.add_column(sa.Column("feed_position", sa.Integer(), nullable=True))
    with op.batch_alter_table("editions") as t:
        t.add_column(sa.Column("note", sa.Text(), nullable=True))
        t.add_column(sa.Column("subject", sa.Text(), nullable=True))
        t.add_column(sa.Column("preheader", sa.Text(), nullable=True))
        t.add_column(sa.Column("approved_by", sa.String(100), nullable=True))
        t.add_column(sa.Column("approved_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("edition_items") as t:
        t.add_column(sa.Column("headline", sa.Text(), nullable=True))
        t.add_column(sa.Column("blurb", sa.Text(), nullable=True))
        t.add_column(sa.Column("pinned", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.create_table(
        "edition_edits",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("edition_id", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("by", sa.String(100), nullable=False),
        sa.Column("action", sa.String(20), nullable=False),
        sa.Column("article_id", sa.Integer(), nullable=True),
        sa.Column("section", sa.String(100), nullable=True),
        sa.Column("position", sa.Integer(), nullable=True),
        sa.Column("value", sa.Text(), nullable=True),
        sa.Column("summary", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["edition_id"],
            ["editions.id"],
            name="fk_edition_edits_edition_id_editions",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_edition_edits"),
    )
    op.create_index("ix_edition_edits_edition_id", "edition_edits", ["edition_id"])
    op.create_table(
        "proofs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("edition_id", sa.Integer(), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent_by", sa.String(100), nullable=False),
        sa.Column("email", sa.String(320), nullable=False),
        sa.Column("variant", sa.String(40), nullable=False),
        sa.Column("label", sa.Text(), nullable=False),
        sa.Column("provider", sa.String(16), nullable=False),
        sa.Column("state", sa.String(12), nullable=False),
        sa.Column("provider_message_id", sa.String(255), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["edition_id"],
            ["editions.id"],
            name="fk_proofs_edition_id_editions",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_proofs"),
    )
    op.create_index("ix_proofs_edition_id", "proofs", ["edition_id"])


def downgrade() -> None:
    op.drop_index("ix_proofs_edition_id", table_name="proofs")
    op.drop_table("proofs")
    op.drop_index("ix_edition_edits_edition_id", table_name="edition_edits")
    op.drop_table("edition_edits")
    with op.batch_alter_table("edition_items") as t:
        t.drop_column("pinned")
        t.drop_column("blurb")
        t.drop_column("headline")
    with op.batch_alter_table("editions") as t:
        for name in ("approved_at", "approved_by", "preheader", "subject", "note"):
            t.drop_column(name)
    with op.batch_alter_table("articles") as t:
        t.drop_column("feed_position")
        t.drop_column("rank")
