"""create notes

Revision ID: a1b2c3d40001
Revises:
Create Date: 2026-01-01 12:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "a1b2c3d40001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("notes",
                    sa.Column("id", sa.Integer, primary_key=True),
                    sa.Column("body", sa.Text, nullable=False))


def downgrade() -> None:
    op.drop_table("notes")
