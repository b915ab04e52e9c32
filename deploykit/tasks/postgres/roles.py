"""Roles and privileges: :func:`role`, :func:`privilege`."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from psycopg import sql

from deploykit.connection import Connection
from deploykit.errors import ConfigError, TaskError
from deploykit.pg import PgSettings
from deploykit.secrets import REDACTED, Secret
from deploykit.task import Facts, Plan, UndoStack
from deploykit.tasks.postgres.scram import SCRAM_ITERATIONS, scram_matches, scram_verifier
from deploykit.tasks.postgres.session import (
    PgTask,
    Session,
    State,
    Statement,
    check_name,
    check_state,
    undo_sql,
)

# -- role ----------------------------------------------------------------------------------

_ROLE_FLAGS: dict[str, tuple[str, str]] = {
    # attribute: (pg_roles column, keyword)
    "login": ("rolcanlogin", "LOGIN"),
    "superuser": ("rolsuper", "SUPERUSER"),
    "createdb": ("rolcreatedb", "CREATEDB"),
    "createrole": ("rolcreaterole", "CREATEROLE"),
    "replication": ("rolreplication", "REPLICATION"),
    "inherit": ("rolinherit", "INHERIT"),
}


@dataclass(frozen=True)
class RoleFacts:
    """A role's attributes and, when it could be read, its stored password verifier."""

    attributes: Mapping[str, bool | int]
    verifier: str | None = field(default=None, repr=False)


def _role_options(attributes: Mapping[str, bool | int], password: str | None,
                  password_set: bool) -> tuple[sql.Composable, str]:
    """Options for ``CREATE/ALTER ROLE ... WITH``, and how they show in the log (a
    password verifier as ``********``)."""
    parts: list[sql.Composable] = []
    for attribute, value in attributes.items():
        if attribute == "connection_limit":
            parts.append(sql.SQL("CONNECTION LIMIT {}").format(sql.Literal(int(value))))
        else:
            keyword = _ROLE_FLAGS[attribute][1]
            parts.append(sql.SQL(keyword if value else f"NO{keyword}"))
    shown = sql.SQL(" ").join(parts).as_string(None)
    if password_set:
        parts.append(sql.SQL("PASSWORD {}").format(
            sql.Literal(password) if password is not None else sql.SQL("NULL")))
        shown += f" PASSWORD {REDACTED if password is not None else 'NULL'}"
    return sql.SQL(" ").join(parts), shown.strip()


class RoleTask(PgTask):
    """A role with attributes and a password (as a Secret), or absent."""

    kind = "postgres.role"

    def __init__(self, role_name: str, *, password: Secret | None = None,
                 login: bool | None = True, superuser: bool | None = None,
                 createdb: bool | None = None, createrole: bool | None = None,
                 replication: bool | None = None, inherit: bool | None = None,
                 connection_limit: int | None = None, state: State = "present",
                 settings: PgSettings | None = None, name: str | None = None) -> None:
        super().__init__(settings=settings, name=name)
        check_state(state)
        self.role_name = check_name("role", role_name)
        if password is not None and not isinstance(password, Secret):
            raise ConfigError(f"role {role_name}: give the password as a Secret, not a "
                              f"plain {type(password).__name__}")
        self.password = password
        wanted: dict[str, bool | int | None] = {
            "login": login, "superuser": superuser, "createdb": createdb,
            "createrole": createrole, "replication": replication, "inherit": inherit,
            "connection_limit": connection_limit}
        self.attributes: dict[str, bool | int] = {k: v for k, v in wanted.items()
                                                  if v is not None}
        self.state = state

    def target(self) -> str:
        return self.role_name

    @property
    def secrets(self) -> tuple[Secret, ...]:
        return (self.password,) if self.password is not None else ()

    def read(self, s: Session) -> RoleFacts | None:
        """The role's facts; its verifier too when a password is managed or it is dropped."""
        columns = ", ".join(col for col, _ in _ROLE_FLAGS.values())
        rows = s.rows(f"SELECT {columns}, rolconnlimit FROM pg_roles WHERE rolname = %s",
                      [self.role_name])
        if not rows:
            return None
        attributes: dict[str, bool | int] = dict(zip(_ROLE_FLAGS, rows[0][:-1], strict=True))
        attributes["connection_limit"] = rows[0][-1]
        if self.password is None and self.state == "present":
            return RoleFacts(attributes)
        if not s.value("SELECT has_table_privilege('pg_catalog.pg_authid', 'SELECT')"):
            if self.password is not None:
                raise TaskError(f"cannot compare the password of role {self.role_name!r}: "
                                f"reading pg_authid needs a superuser login")
            return RoleFacts(attributes)
        verifier = s.value("SELECT rolpassword FROM pg_authid WHERE rolname = %s",
                           [self.role_name])
        return RoleFacts(attributes, verifier)

    def compare(self, current: RoleFacts | None) -> Plan:
        """The plan from the role's facts (None: it does not exist)."""
        plan = Plan()
        if self.state == "absent":
            if current is not None:
                plan.add("state", "present", "absent")
            return plan
        if current is None:
            plan.add("state", "absent", "present")
        for attribute, value in self.attributes.items():
            before = None if current is None else current.attributes[attribute]
            if before != value:
                plan.add(attribute, _show(before), _show(value))
        if self.password is not None:
            verifier = None if current is None else current.verifier
            if not scram_matches(verifier, self.password):
                plan.add("password", None if verifier is None else "(secret)",
                         "(new secret)" if verifier is not None else "(secret)")
        return plan

    def plan(self, conn: Connection, facts: Facts) -> Plan:
        facts["role"] = self.read(self.scope(facts).sql("postgres"))
        return self.compare(facts["role"])

    def apply(self, conn: Connection, facts: Facts, plan: Plan, undo: UndoStack) -> None:
        s = self.scope(facts).sql("postgres")
        settings = self.settings_for(conn)
        role = sql.Identifier(self.role_name)
        current: RoleFacts | None = facts["role"]
        if self.state == "absent":
            assert current is not None
            options, shown = _role_options(current.attributes, current.verifier,
                                           current.verifier is not None)
            undo.push(f"recreate role {self.role_name} (memberships not restored)", undo_sql(
                self.name, settings, "postgres",
                [(sql.SQL("CREATE ROLE {} WITH {}").format(role, options),
                  f"CREATE ROLE {role.as_string(None)} WITH {shown}")]))
            s.write(sql.SQL("DROP ROLE {}").format(role))
            return
        changed = {a: v for a, v in self.attributes.items() if plan.has(a)}
        verifier = None
        if plan.has("password") and self.password is not None:
            iterations = s.value("SELECT current_setting('scram_iterations', true)")
            verifier = scram_verifier(self.password,
                                      iterations=int(iterations or SCRAM_ITERATIONS))
        options, shown = _role_options(changed, verifier, verifier is not None)
        who = role.as_string(None)
        if current is None:
            verb = "CREATE"
            undo.push(f"drop role {self.role_name} (created by {self.name})", undo_sql(
                self.name, settings, "postgres",
                [(sql.SQL("DROP ROLE IF EXISTS {}").format(role), None)]))
        else:
            verb = "ALTER"
            back = {a: current.attributes[a] for a in changed}
            old_options, old_shown = _role_options(back, current.verifier, verifier is not None)
            what = ", ".join([*back, *(["password"] if verifier is not None else [])])
            undo.push(f"restore role {self.role_name} ({what})", undo_sql(
                self.name, settings, "postgres",
                [(sql.SQL("ALTER ROLE {} WITH {}").format(role, old_options),
                  f"ALTER ROLE {who} WITH {old_shown}")]))
        s.write(sql.SQL(verb + " ROLE {} WITH {}").format(role, options),
                shown=f"{verb} ROLE {who} WITH {shown}")


def _show(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def role(name: str, *, password: Secret | None = None, login: bool | None = True,
         superuser: bool | None = None, createdb: bool | None = None,
         createrole: bool | None = None, replication: bool | None = None,
         inherit: bool | None = None, connection_limit: int | None = None,
         state: State = "present", settings: PgSettings | None = None) -> RoleTask:
    """Ensure role ``name`` exists with these attributes and password, or is absent.

    Args:
        password: a :class:`~deploykit.secrets.Secret`; None leaves the password
            alone. It is compared with the SCRAM-SHA-256 verifier stored in
            ``pg_authid`` (recomputed with its salt: a superuser login is
            needed), and set as a verifier computed on the controller: the
            password never reaches the server, a log, a diff or a report. A
            stored md5 hash never matches, so it is replaced by a SCRAM verifier.
        login: LOGIN (the default: a role for an application) or NOLOGIN.
        superuser, createdb, createrole, replication, inherit: the attribute
            flags; None leaves a flag as it is (a new role gets PostgreSQL's default).
        connection_limit: CONNECTION LIMIT (-1: none).

    Plan: ``state: absent -> present``, ``createdb: false -> true``,
    ``password: (secret) -> (new secret)``.
    Undo: a created role is dropped; changed attributes and the password
    (its previous verifier) are set back; a dropped role is recreated with its
    attributes and password verifier (not its memberships).
    """
    return RoleTask(name, password=password, login=login, superuser=superuser,
                    createdb=createdb, createrole=createrole, replication=replication,
                    inherit=inherit, connection_limit=connection_limit, state=state,
                    settings=settings)



# -- privilege -----------------------------------------------------------------------------

ObjectType = Literal["database", "schema", "table", "sequence"]
PRIVILEGES: dict[str, tuple[str, ...]] = {
    "database": ("CONNECT", "CREATE", "TEMPORARY"),
    "schema": ("CREATE", "USAGE"),
    "table": ("DELETE", "INSERT", "REFERENCES", "SELECT", "TRIGGER", "TRUNCATE", "UPDATE"),
    "sequence": ("SELECT", "UPDATE", "USAGE"),
}
"""The privileges each object type has, as ``aclexplode`` names them."""
_ACL_OBJECTS: dict[str, str] = {
    # name, acl (explicit, else the default for the owner) of the objects asked for
    "database": "SELECT datname::text, coalesce(datacl, acldefault('d', datdba)) "
                "FROM pg_database WHERE datname = ANY(%(names)s)",
    "schema": "SELECT nspname::text, coalesce(nspacl, acldefault('n', nspowner)) "
              "FROM pg_namespace WHERE nspname = ANY(%(names)s)",
    "table": "SELECT c.relname::text, coalesce(c.relacl, acldefault('r', c.relowner)) "
             "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
             "WHERE n.nspname = %(schema)s AND c.relkind IN ('r', 'p', 'v', 'm', 'f') "
             "AND (%(all)s OR c.relname = ANY(%(names)s))",
    "sequence": "SELECT c.relname::text, coalesce(c.relacl, acldefault('s', c.relowner)) "
                "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = %(schema)s AND c.relkind = 'S' "
                "AND (%(all)s OR c.relname = ANY(%(names)s))",
}


def _privilege_list(on: str, privileges: str | Sequence[str]) -> tuple[str, ...]:
    known = PRIVILEGES.get(on)
    if known is None:
        raise ConfigError(f"privilege: on must be one of {', '.join(PRIVILEGES)}, not {on!r}")
    items = [privileges] if isinstance(privileges, str) else list(privileges)
    wanted: set[str] = set()
    for item in items:
        for word in str(item).replace(",", " ").upper().split():
            word = "TEMPORARY" if word == "TEMP" else word
            if word == "ALL":
                wanted.update(known)
            elif word in known:
                wanted.add(word)
            else:
                raise ConfigError(f"privilege {word!r} does not apply to a {on}; "
                                  f"{on} privileges: {', '.join(known)}, ALL")
    if not wanted:
        raise ConfigError("privilege: name at least one privilege")
    return tuple(sorted(wanted))


def _join(items: Iterable[str]) -> str | None:
    text = ",".join(sorted(items))
    return text or None


class PrivilegeTask(PgTask):
    """Privileges of a role on databases, schemas, tables or sequences."""

    kind = "postgres.privilege"

    def __init__(self, role_name: str, privileges: str | Sequence[str], *, on: ObjectType,
                 objects: str | Sequence[str], db: str, schema: str = "public",
                 state: State = "present", settings: PgSettings | None = None,
                 name: str | None = None) -> None:
        super().__init__(settings=settings, name=name)
        check_state(state)
        self.role_name = "PUBLIC" if role_name.upper() == "PUBLIC" else check_name(
            "role", role_name)
        self.on = on
        self.privileges = _privilege_list(on, privileges)
        names = [objects] if isinstance(objects, str) else list(objects)
        if not names:
            raise ConfigError("privilege: name at least one object")
        self.all = names == ["ALL"] and on in ("table", "sequence")
        self.objects = () if self.all else tuple(check_name(on, n) for n in names)
        self.db = check_name("database", db)
        self.schema = check_name("schema", schema)
        self.state = state

    def target(self) -> str:
        where = f"{self.schema}." if self.on in ("table", "sequence") else ""
        what = f"ALL {self.on}s in {self.schema}" if self.all else ", ".join(
            where + o for o in self.objects)
        return f"{','.join(self.privileges)} on {self.on} {what} to {self.role_name}"

    def label(self, obj: str) -> str:
        """How the plan names one object (``table public.orders``)."""
        prefix = f"{self.schema}." if self.on in ("table", "sequence") else ""
        return f"{self.on} {prefix}{obj}"

    def read(self, s: Session) -> dict[str, frozenset[str]]:
        """Object name -> the privileges the role holds on it explicitly."""
        if self.role_name == "PUBLIC":
            grantee = 0
        else:
            grantee = s.value("SELECT oid FROM pg_roles WHERE rolname = %s", [self.role_name])
            if grantee is None:
                raise TaskError(f"role {self.role_name!r} does not exist")
        query = ("SELECT o.name, a.privilege_type FROM (" + _ACL_OBJECTS[self.on] +
                 ") AS o(name, acl) LEFT JOIN LATERAL aclexplode(o.acl) AS a "
                 "ON a.grantee = %(grantee)s")
        rows = s.rows(query, {"names": list(self.objects), "schema": self.schema,
                              "all": self.all, "grantee": grantee})
        held: dict[str, set[str]] = {}
        for obj, privilege in rows:
            held.setdefault(obj, set())
            if privilege is not None:
                held[obj].add(privilege)
        missing = [o for o in self.objects if o not in held]
        if missing:
            raise TaskError(f"{', '.join(self.label(o) for o in missing)} does not exist "
                            f"in database {self.db!r}")
        return {o: frozenset(p) for o, p in held.items()}

    def compare(self, held: Mapping[str, frozenset[str]]) -> Plan:
        """One change per object whose privileges differ."""
        plan = Plan()
        wanted = set(self.privileges)
        for obj in sorted(held):
            have = held[obj]
            after = have | wanted if self.state == "present" else have - wanted
            if after != have:
                plan.add(f"{self.label(obj)} privileges of {self.role_name}",
                         _join(have), _join(after))
        return plan

    def plan(self, conn: Connection, facts: Facts) -> Plan:
        facts["held"] = self.read(self.scope(facts).sql(self.db))
        return self.compare(facts["held"])

    def statement(self, verb: str, obj: str, privileges: Iterable[str]) -> sql.Composed:
        """``GRANT ... ON TYPE obj TO role`` or ``REVOKE ... FROM role``."""
        target = (sql.Identifier(self.schema, obj) if self.on in ("table", "sequence")
                  else sql.Identifier(obj))
        who = sql.SQL("PUBLIC") if self.role_name == "PUBLIC" else sql.Identifier(self.role_name)
        return sql.SQL("{} {} ON {} {} {} {}").format(
            sql.SQL(verb), sql.SQL(", ").join(sql.SQL(p) for p in sorted(privileges)),
            sql.SQL(self.on.upper()), target, sql.SQL("TO" if verb == "GRANT" else "FROM"), who)

    def apply(self, conn: Connection, facts: Facts, plan: Plan, undo: UndoStack) -> None:
        s = self.scope(facts).sql(self.db)
        held: Mapping[str, frozenset[str]] = facts["held"]
        verb, back_verb = ("GRANT", "REVOKE") if self.state == "present" else ("REVOKE", "GRANT")
        done: list[Statement] = []
        undo.push(f"{back_verb.lower()} what {self.name} {verb.lower()}ed",
                  undo_sql(self.name, self.settings_for(conn), self.db, done))
        for obj in sorted(held):
            delta = (set(self.privileges) - held[obj] if self.state == "present"
                     else set(self.privileges) & held[obj])
            if delta:
                s.write(self.statement(verb, obj, delta))
                done.append((self.statement(back_verb, obj, delta), None))


def privilege(role: str, privileges: str | Sequence[str], *, on: ObjectType,
              objects: str | Sequence[str], db: str = "postgres", schema: str = "public",
              state: State = "present", settings: PgSettings | None = None) -> PrivilegeTask:
    """Ensure ``role`` holds (or, with ``state="absent"``, does not hold) ``privileges``.

    Args:
        role: the grantee, or ``"PUBLIC"``.
        privileges: ``"SELECT,INSERT"``, a list, or ``"ALL"`` (every privilege
            of the object type; ``TEMP`` means ``TEMPORARY``).
        on: ``database``, ``schema``, ``table`` (tables, views, materialized and
            foreign tables) or ``sequence``.
        objects: names of the objects (tables and sequences in ``schema``), or
            ``"ALL"`` for every table/sequence existing in ``schema`` now (not
            default privileges for future ones).
        db: the database to connect to (where the schemas and tables are).

    Compares the role's explicit ACL entries (``aclexplode`` of the ACL, the
    owner's default ACL when there is none): privileges the role has through
    membership or as superuser do not count. Only the privileges named are
    granted or revoked; others are left alone. A missing role or object is an
    error naming it. Plan: ``table public.orders privileges of app: SELECT ->
    INSERT,SELECT``. Undo: revokes what was granted / grants what was revoked.
    """
    return PrivilegeTask(role, privileges, on=on, objects=objects, db=db, schema=schema,
                         state=state, settings=settings)
