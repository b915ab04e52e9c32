"""add notes.tags (expand: nullable, v1 keeps writing)

Revision ID: a1b2c3d40002
Revises: a1b2c3d40001
Create Date: 2026-02-01 12:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "a1b2c3d40002"
down_revision = "a1b2c3d40001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("notes", sa.Column("tags", sa.Text, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("notes") as batch:  # SQLite: drop a column by copying the table
        batch.drop_column("tags")
