"""``postgres.app_role`` on the lab's db-1: a least-privilege login role owning its database."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator

import pytest
from lab_data import admin, db1_conn  # noqa: F401 (fixtures)

from deploykit import pg
from deploykit.connection import Connection
from deploykit.errors import TaskError
from deploykit.secrets import Secret
from deploykit.tasks import postgres
from deploykit.testing.idempotence import assert_idempotent as apply_twice

pytestmark = pytest.mark.lab

HOST = "db-1"






@pytest.fixture
def name(conn: Connection) -> Iterator[str]:
    role = f"dka{uuid.uuid4().hex[:6]}"
    yield role
    admin(conn, f'DROP DATABASE IF EXISTS "{role}_db" WITH (FORCE)')
    admin(conn, f'DROP ROLE IF EXISTS "{role}"')


def test_app_role_is_least_privilege_and_idempotent(conn: Connection, name: str) -> None:
    admin(conn, f'CREATE ROLE "{name}" LOGIN CREATEDB')  # an existing role with too much
    password = Secret(f"pw-{uuid.uuid4().hex}")
    for step in postgres.app_role(name, password=password, db=f"{name}_db"):
        apply_twice(conn, step)
    assert admin(conn, "SELECT rolcanlogin, rolsuper, rolcreatedb, rolcreaterole, "
                       "rolreplication FROM pg_roles WHERE rolname = %s", [name]) == [
        (True, False, False, False, False)]
    assert admin(conn, "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s",
                 [f"{name}_db"]) == [(name,)]

    # the app logs in over TCP with its password: it owns its schema, nothing more
    own = dataclasses.replace(pg.PgSettings.from_host(conn.host), user=name, password=password)
    with pg.connect(conn, f"{name}_db", settings=own) as app:
        app.execute("CREATE TABLE orders (id int)")
        app.execute("INSERT INTO orders VALUES (1)")
        with pytest.raises(Exception, match="permission denied to create database"):
            app.execute(f'CREATE DATABASE "{name}_other"')
    wrong = dataclasses.replace(own, password=Secret("wrong"))
    with pytest.raises(TaskError, match="password authentication failed"):
        with pg.connect(conn, f"{name}_db", settings=wrong):
            pass
    assert admin(conn, "SELECT count(*) FROM orders", db=f"{name}_db") == [(1,)]
