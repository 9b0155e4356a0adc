"""People, orders and work sessions: apprentices, maîtres and their log-in sessions, customers, orders,
operations, and the sessions of apprentices at the machines.

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "apprentices",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("first_name", sa.String(60), nullable=False),
        sa.Column("last_name", sa.String(60), nullable=False),
        sa.Column("badge", sa.String(64), nullable=False),
        sa.Column("code", sa.String(16), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_apprentices"),
        sa.UniqueConstraint("badge", name="uq_apprentices_badge"),
        sa.UniqueConstraint("code", name="uq_apprentices_code"),
    )
    op.create_table(
        "maitres",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("login", sa.String(64), nullable=False),
        sa.Column("display_name", sa.String(120), nullable=False),
        sa.Column("password_hash", sa.String(255), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_maitres"),
        sa.UniqueConstraint("login", name="uq_maitres_login"),
    )
    op.create_table(
        "maitre_sessions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("maitre_id", sa.Integer(), nullable=False),
        sa.Column("csrf", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["maitre_id"], ["maitres.id"], name="fk_maitre_sessions_maitre_id_maitres",
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name="pk_maitre_sessions"),
        sa.UniqueConstraint("token_hash", name="uq_maitre_sessions_token_hash"),
    )
    op.create_table(
        "customers",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(120), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_customers"),
        sa.UniqueConstraint("name", name="uq_customers_name"),
    )
    op.create_table(
        "orders",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("reference", sa.String(64), nullable=False),
        sa.Column("customer_id", sa.Integer(), nullable=False),
        sa.Column("part_number", sa.String(64), nullable=False),
        sa.Column("quantity", sa.Integer(), nullable=False),
        sa.Column("due_date", sa.Date(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("closed_at", sa.DateTime(), nullable=True),
        sa.CheckConstraint("quantity > 0", name="ck_orders_quantity_positive"),
        sa.ForeignKeyConstraint(["customer_id"], ["customers.id"], name="fk_orders_customer_id_customers"),
        sa.PrimaryKeyConstraint("id", name="pk_orders"),
        sa.UniqueConstraint("reference", name="uq_orders_reference"),
    )
    op.create_table(
        "operations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("order_id", sa.Integer(), nullable=False),
        sa.Column("sequence", sa.Integer(), nullable=False),
        sa.Column("machine_kind", sa.String(16), nullable=False),
        sa.Column("standard_cycle_s", sa.Float(), nullable=False),
        sa.Column("setup_s", sa.Float(), nullable=False),
        sa.CheckConstraint("machine_kind IN ('lathe', 'mill')", name="ck_operations_machine_kind"),
        sa.CheckConstraint("standard_cycle_s > 0", name="ck_operations_cycle_positive"),
        sa.CheckConstraint("setup_s >= 0", name="ck_operations_setup_not_negative"),
        sa.ForeignKeyConstraint(["order_id"], ["orders.id"], name="fk_operations_order_id_orders", ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name="pk_operations"),
        sa.UniqueConstraint("order_id", "sequence", name="uq_operations_order_sequence"),
    )
    op.create_table(
        "work_sessions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("apprentice_id", sa.Integer(), nullable=False),
        sa.Column("machine_id", sa.String(63), nullable=False),
        sa.Column("operation_id", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("ended_at", sa.DateTime(), nullable=True),
        sa.Column("ended_by", sa.String(16), nullable=True),
        sa.ForeignKeyConstraint(["apprentice_id"], ["apprentices.id"],
                                name="fk_work_sessions_apprentice_id_apprentices"),
        sa.ForeignKeyConstraint(["operation_id"], ["operations.id"], name="fk_work_sessions_operation_id_operations"),
        sa.PrimaryKeyConstraint("id", name="pk_work_sessions"),
    )
    # At most one open session per machine, enforced by the database (both dialects know partial indexes).
    op.create_index(
        "uq_work_sessions_open_per_machine",
        "work_sessions",
        ["machine_id"],
        unique=True,
        sqlite_where=sa.text("ended_at IS NULL"),
        postgresql_where=sa.text("ended_at IS NULL"),
    )


def downgrade() -> None:
    op.drop_index("uq_work_sessions_open_per_machine", table_name="work_sessions")
    for table in ("work_sessions", "operations", "orders", "customers", "maitre_sessions", "maitres", "apprentices"):
        op.drop_table(table)
