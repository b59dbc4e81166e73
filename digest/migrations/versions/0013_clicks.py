"""clicks: tracked links, click events, the subject of every delivery (issue 15)

Revision ID: 0013
Revises: 0009
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | Sequence[str] | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_SENT = sa.text("state = 'sent'")


def upgrade() -> None:
    with op.batch_alter_table("deliveries") as batch:
        batch.add_column(sa.Column("subject", sa.String(length=300), nullable=True))
    op.create_index(
        "ix_deliveries_sent",
        "deliveries",
        ["edition_id", "variant", "segment", "subject", "id"],
        unique=False,
        sqlite_where=_SENT,
        postgresql_where=_SENT,
    )
    op.create_table(
        "tracked_links",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("edition_id", sa.Integer(), nullable=False),
        sa.Column("url_hash", sa.String(length=40), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("section", sa.String(length=100), nullable=True),
        sa.Column("article_id", sa.Integer(), nullable=True),
        sa.Column("label", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["edition_id"],
            ["editions.id"],
            name=op.f("fk_tracked_links_edition_id_editions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tracked_links")),
        sa.UniqueConstraint("edition_id", "url_hash", name=op.f("uq_tracked_links_edition_id")),
    )
    op.create_table(
        "click_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("edition_id", sa.Integer(), nullable=False),
        sa.Column("delivery_id", sa.Integer(), nullable=False),
        sa.Column("link_id", sa.Integer(), nullable=True),
        sa.Column("kind", sa.String(length=5), nullable=False),
        sa.Column("variant", sa.String(length=40), nullable=False),
        sa.Column("segment", sa.String(length=200), nullable=False),
        sa.Column("subject", sa.String(length=300), nullable=True),
        sa.Column("clicked_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("source", sa.String(length=10), nullable=False),
        sa.Column("agent", sa.String(length=10), nullable=False),
        sa.Column("flag", sa.String(length=10), nullable=True),
        sa.Column("counted", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(
            ["delivery_id"],
            ["deliveries.id"],
            name=op.f("fk_click_events_delivery_id_deliveries"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["edition_id"],
            ["editions.id"],
            name=op.f("fk_click_events_edition_id_editions"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["link_id"],
            ["tracked_links.id"],
            name=op.f("fk_click_events_link_id_tracked_links"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_click_events")),
    )
    op.create_index(
        "ix_click_events_links",
        "click_events",
        ["edition_id", "kind", "counted", "link_id", "delivery_id"],
    )
    op.create_index(
        "ix_click_events_readers",
        "click_events",
        ["edition_id", "kind", "counted", "variant", "segment", "subject", "delivery_id"],
    )
    op.create_index("ix_click_events_delivery", "click_events", ["delivery_id", "clicked_at"])
    op.create_table(
        "ab_tests",
        sa.Column("edition_id", sa.Integer(), nullable=False),
        sa.Column("subjects", sa.Text(), nullable=False),
        sa.Column("sample", sa.String(length=20), nullable=False),
        sa.Column("phase", sa.String(length=10), nullable=False),
        sa.Column("sample_done_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("winner", sa.Text(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["edition_id"],
            ["editions.id"],
            name=op.f("fk_ab_tests_edition_id_editions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("edition_id", name=op.f("pk_ab_tests")),
    )


def downgrade() -> None:
    op.drop_table("ab_tests")
    op.drop_table("click_events")
    op.drop_table("tracked_links")
    op.drop_index("ix_deliveries_sent", table_name="deliveries")
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_column("subject")
