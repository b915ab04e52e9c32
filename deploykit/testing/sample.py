"""The sample app (examples/app) on the lab: its shared ``.env``."""

from __future__ import annotations

from deploykit.inventory import Host
from deploykit.pg import url
from deploykit.secrets import Secret


def app_env(db: Host, database: str, *, header: str = "") -> Secret:
    """The sample app's ``.env``: PostgreSQL (``database``) and Redis on host ``db``.

    A Secret: it holds the database password (percent-encoded in the URL).
    """
    redis_port = db.vars.get("redis_port", 6379)
    return Secret(f"{header}DATABASE_URL={url(db, database).reveal()}\n"
                  f"REDIS_URL=redis://{db.address}:{redis_port}/0\n")
