"""Quality: the school's list of scrap reasons (seeded with common ones), and the good/scrap declarations made
at the end of a work session, with the scrap split by reason.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None

# The starting list; the school edits it afterwards (admin page). Codes are short, for reports.
SEED_REASONS = [
    ("COTE", "Cote hors tolérance", "Dimension out of tolerance"),
    ("ETAT", "État de surface", "Surface finish"),
    ("BAVURE", "Bavure, arête vive", "Burr, sharp edge"),
    ("REGLAGE", "Pièce de réglage", "Set-up part"),
    ("MATIERE", "Défaut matière", "Material defect"),
    ("OUTIL", "Casse ou usure d'outil", "Broken or worn tool"),
]


def upgrade() -> None:
    reasons = op.create_table(
        "scrap_reasons",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("code", sa.String(16), nullable=False),
        sa.Column("label_fr", sa.String(120), nullable=False),
        sa.Column("label_en", sa.String(120), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_scrap_reasons"),
        sa.UniqueConstraint("code", name="uq_scrap_reasons_code"),
    )
    op.bulk_insert(
        reasons,
        [{"code": code, "label_fr": fr, "label_en": en, "active": True} for code, fr, en in SEED_REASONS],
    )
    op.create_table(
        "quality_declarations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("session_id", sa.Integer(), nullable=False),
        sa.Column("good", sa.Integer(), nullable=False),
        sa.Column("scrap", sa.Integer(), nullable=False),
        sa.Column("declared_at", sa.DateTime(), nullable=False),
        sa.Column("declared_by", sa.String(16), nullable=False),
        sa.CheckConstraint("good >= 0", name="ck_quality_declarations_good_not_negative"),
        sa.CheckConstraint("scrap >= 0", name="ck_quality_declarations_scrap_not_negative"),
        sa.ForeignKeyConstraint(["session_id"], ["work_sessions.id"],
                                name="fk_quality_declarations_session_id_work_sessions"),
        sa.PrimaryKeyConstraint("id", name="pk_quality_declarations"),
        sa.UniqueConstraint("session_id", name="uq_quality_declarations_session_id"),
    )
    op.create_table(
        "declaration_scrap",
        sa.Column("declaration_id", sa.Integer(), nullable=False),
        sa.Column("reason_id", sa.Integer(), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.CheckConstraint("count > 0", name="ck_declaration_scrap_count_positive"),
        sa.ForeignKeyConstraint(["declaration_id"], ["quality_declarations.id"],
                                name="fk_declaration_scrap_declaration_id_quality_declarations", ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["reason_id"], ["scrap_reasons.id"],
                                name="fk_declaration_scrap_reason_id_scrap_reasons"),
        sa.PrimaryKeyConstraint("declaration_id", "reason_id", name="pk_declaration_scrap"),
    )


def downgrade() -> None:
    for table in ("declaration_scrap", "quality_declarations", "scrap_reasons"):
        op.drop_table(table)
