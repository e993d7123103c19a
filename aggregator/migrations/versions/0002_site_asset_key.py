"""Tickets and rule state keyed by (site, asset): asset names are only unique within a site.

The schema of commit a232ddb. Tickets already had their ``site`` column, so every ticket
keeps its site and status; only the one-open-ticket index changes from (asset, kind) to
(site, asset, kind). The old invariant was the stricter one, so no existing row can
violate the new index.

``rule_state`` had no ``site``: one row per (rule, asset), shared by every site with an
asset of that name (the bug this revision fixes). Each old row is copied to every site
the database knows (``agents`` and ``tickets``), so every (site, asset) continues from the
windows the old code would have used for it. A deployment with one site, the usual case,
gets exactly its rows back with their site filled in; with several, a copy for a site that
has no asset of that name is never read. A row is only kept with ``site = ''`` (no real
site: names have at least one character) when the database knows no site at all, so
nothing is dropped.

Later schema changes (dedupe retention in 92a55e4, ticket cooldown in 13cc4bb) added no
column or index: they query what this revision leaves.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager

import sqlalchemy as sa
from alembic import op
from alembic.operations import BatchOperations

__all__ = ["downgrade", "upgrade"]

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NAME = 128
NOT_RESOLVED = sa.text("status != 'resolved'")
KNOWN_SITES = "SELECT site FROM agents UNION SELECT site FROM tickets"


def _rule_state_batch() -> AbstractContextManager[BatchOperations]:
    # Reflection gives SQLite's primary key no name; the convention names it as PostgreSQL
    # does, so the same drop_constraint works on both (SQLite rebuilds the table).
    return op.batch_alter_table("rule_state", naming_convention={"pk": "%(table_name)s_pkey"})


def upgrade() -> None:
    op.drop_index("uq_tickets_open_asset_kind", table_name="tickets")
    op.create_index(
        "uq_tickets_open_site_asset_kind",
        "tickets",
        ["site", "asset", "kind"],
        unique=True,
        sqlite_where=NOT_RESOLVED,
        postgresql_where=NOT_RESOLVED,
    )

    # The server default fills the new column in the old rows; it is dropped again below,
    # since the models give no default (a row without a site would be a bug).
    with _rule_state_batch() as batch:
        batch.add_column(sa.Column("site", sa.String(NAME), nullable=False, server_default=""))
        batch.drop_constraint("rule_state_pkey", type_="primary")
        batch.create_primary_key("rule_state_pkey", ["rule", "site", "asset"])
    op.execute(
        "INSERT INTO rule_state (rule, site, asset, windows, updated_at) "
        "SELECT r.rule, s.site, r.asset, r.windows, r.updated_at "
        f"FROM rule_state r CROSS JOIN ({KNOWN_SITES}) s WHERE r.site = ''"
    )
    op.execute(f"DELETE FROM rule_state WHERE site = '' AND EXISTS ({KNOWN_SITES})")
    with op.batch_alter_table("rule_state") as batch:
        batch.alter_column("site", existing_type=sa.String(NAME), server_default=None)


def downgrade() -> None:
    # One row per (rule, asset) again: the most recently updated site's windows win.
    op.execute(
        "DELETE FROM rule_state WHERE EXISTS (SELECT 1 FROM rule_state newer "
        "WHERE newer.rule = rule_state.rule AND newer.asset = rule_state.asset "
        "AND (newer.updated_at > rule_state.updated_at OR "
        "(newer.updated_at = rule_state.updated_at AND newer.site > rule_state.site)))"
    )
    with _rule_state_batch() as batch:
        batch.drop_constraint("rule_state_pkey", type_="primary")
        batch.create_primary_key("rule_state_pkey", ["rule", "asset"])
        batch.drop_column("site")

    # Fails (unique violation) if two sites have an open ticket for the same (asset, kind):
    # the old schema cannot hold that, and choosing which ticket to close is not ours to do.
    op.drop_index("uq_tickets_open_site_asset_kind", table_name="tickets")
    op.create_index(
        "uq_tickets_open_asset_kind",
        "tickets",
        ["asset", "kind"],
        unique=True,
        sqlite_where=NOT_RESOLVED,
        postgresql_where=NOT_RESOLVED,
    )
