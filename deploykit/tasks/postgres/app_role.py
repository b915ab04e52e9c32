"""A least-privilege role and database for an application: :func:`app_role`."""

from __future__ import annotations

from deploykit.pg import PgSettings
from deploykit.secrets import Secret
from deploykit.tasks.postgres.objects import DatabaseTask, database
from deploykit.tasks.postgres.roles import RoleTask, role

__all__ = ["app_role"]


def app_role(name: str, *, password: Secret, db: str | None = None,
             connection_limit: int | None = None,
             settings: PgSettings | None = None) -> list[RoleTask | DatabaseTask]:
    """The steps giving an application its own login role and database.

    * role ``name``: LOGIN with ``password`` (stored as a SCRAM verifier), and
      explicitly NOSUPERUSER, NOCREATEDB, NOCREATEROLE, NOREPLICATION (an
      existing role with more is taken down to these);
    * database ``db`` (default: ``name``) owned by the role, so the app can
      create and migrate its own schema, and nothing outside it.

    The steps are idempotent (run them in order with the runner, or ``.run``
    each); the app connects with ``deploykit.pg.url(host, db,
    settings=PgSettings(user=name, password=password))``. Undo: each step's own
    (a created role or database is dropped again).
    """
    return [
        role(name, password=password, login=True, superuser=False, createdb=False,
             createrole=False, replication=False, connection_limit=connection_limit,
             settings=settings),
        database(db or name, owner=name, settings=settings),
    ]
