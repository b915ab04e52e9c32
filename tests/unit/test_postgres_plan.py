"""deploykit.tasks.postgres without hosts: recorded facts in, plans and verdicts out.

The SCRAM verifiers below were made by PostgreSQL 15 itself (``CREATE ROLE ...
PASSWORD '<plain>'`` on the lab's db-1, then ``pg_authid.rolpassword``): they
pin the password comparison, SASLprep included, to the server's behaviour.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

import pytest

from deploykit.connection import Connection
from deploykit.errors import ConfigError, TaskError
from deploykit.inventory import Host
from deploykit.pg import PgSettings
from deploykit.secrets import Secret
from deploykit.tasks import postgres
from deploykit.tasks.postgres import (
    DatabaseFacts,
    DumpFacts,
    ExtensionFacts,
    RoleFacts,
    count_differences,
    parse_dump,
    parse_marker,
    render_differences,
    retention,
    saslprep,
    scram_matches,
    scram_verifier,
    split_guc_list,
)
from deploykit.tasks.postgres.access import Access

# (password, verifier stored by PostgreSQL 15 for it)
SERVER_VERIFIERS = {
    "ascii": ("pencil", "SCRAM-SHA-256$4096:R1qrIY9urbSSI5ESXwtrmA==$MdnrsHDosNib/BBiev5X5wO1p"
                        "OC9sSCkdgUC1ZzHlao=:F5S97emGnNyWsL6m5lO1nZsX7LBv0+mTMY8OjfsUCgI="),
    "nfkc and spaces": ("p\u00e4ss\u2163 w\u00a0rd",
                        "SCRAM-SHA-256$4096:1+3KOYjjziFesUJ8LA+T2Q==$FwWnC/Y/ot9nltjvdnGex/jlLP"
                        "YL2Hkgup3XU7m596o=:I+Gg8zcZvV9mIZDDzVcl7uToh3QrVZRVNn8nxMFd0DI="),
    "mapped to nothing": ("a\u00adb\u200bc\u00e9",
                          "SCRAM-SHA-256$4096:VvbKDQDPM6Ms4NZ2t/srPA==$3E/NjT7kH+hae4rkycJ03DG8"
                          "kk6ONXajyFmya1Zir3M=:DcDvvwJGhSwySvNDgI+E4EwgpMeeBuT/ELsWEkZz6Wc="),
    "prohibited: raw": ("\u00e9\u0007x",
                        "SCRAM-SHA-256$4096:DRNGHFFh+O1wJOANx7PCZA==$h25150wW0jhCng4TyGu7LPtTWt"
                        "r/PxtkJ3IVFb0sfUc=:d7TDguKjYzcBe4MUif0DZZjL/xx3tbdr2/ak/AK8kK8="),
    "bidi broken: raw": ("\u05d0abc",
                         "SCRAM-SHA-256$4096:QI1wUIjhtSkFIRlMCPLgjg==$PLltdilAIogeq36KW5BhefpZY"
                         "v1up6uBd9p3X7oBYSk=:1Wrvuy18ffoov7ml8VirfxQO1ZXdSrn6+3qUXi76iJY="),
    "unassigned: raw": ("\u00e9\u0221",
                        "SCRAM-SHA-256$4096:1y/KqVrPh2c7TSk4yu9YXA==$TOt3mlZeQoTfHXdW/J1h59EBY8"
                        "2R1rZaU+TuQJQrmzw=:DME3Qsj9BmiGKXtVgErxzd3JK/ttF2P5S0kUCKEbWxo="),
}


@pytest.mark.parametrize("case", sorted(SERVER_VERIFIERS))
def test_password_matches_the_servers_own_verifier(case: str) -> None:
    password, verifier = SERVER_VERIFIERS[case]
    assert scram_matches(verifier, Secret(password))
    assert not scram_matches(verifier, Secret(password + "x"))


def test_saslprep() -> None:
    assert saslprep("pencil") == b"pencil"
    assert saslprep("\u2163\u00a0x") == b"IV x"  # NFKC, non-ASCII space
    assert saslprep("a\u00adb\u200bc") == b"ab c"  # soft hyphen dropped, ZWSP a space
    assert saslprep("\u05d0abc") == "\u05d0abc".encode()  # bidi rule broken: raw bytes


def test_verifier_round_trip_and_rejects() -> None:
    secret = Secret("correct horse")
    made = scram_verifier(secret, salt=b"0123456789abcdef", iterations=4096)
    assert made.startswith("SCRAM-SHA-256$4096:MDEyMzQ1Njc4OWFiY2RlZg==$")
    assert "correct horse" not in made
    assert scram_matches(made, secret)
    assert scram_verifier(secret) != scram_verifier(secret)  # random salt
    for stored in (None, "", "md5" + "0" * 32, made.replace("$4096:", "$0:"),
                   made.replace("SCRAM-SHA-256", "SCRAM-SHA-1"), made[:-8] + "!!!!!!!="):
        assert not scram_matches(stored, secret)


# -- plans of the state tasks ----------------------------------------------------------


def db_facts(owner: str = "app", encoding: str = "UTF8") -> DatabaseFacts:
    return DatabaseFacts(1, owner, encoding, "C", "C", True)


def test_database_plans() -> None:
    create = postgres.database("shop", owner="app", encoding="utf8")
    assert create.compare(None).render() == ("state: absent -> present\nowner: (none) -> app\n"
                                             "encoding: (none) -> UTF8")
    assert create.template == "template0"
    assert not create.compare(db_facts())
    assert postgres.database("shop", owner="ops").compare(db_facts()).render() == \
        "owner: app -> ops"
    assert not postgres.database("shop").compare(db_facts(owner="anyone"))
    with pytest.raises(TaskError, match="has encoding LATIN1, not UTF8; an encoding cannot"):
        create.compare(db_facts(encoding="LATIN1"))
    gone = postgres.database("shop", state="absent")
    assert gone.compare(db_facts()).render() == "state: present -> absent"
    assert not gone.compare(None)


def role_facts(verifier: str | None = None, **attributes: bool | int) -> RoleFacts:
    base: dict[str, bool | int] = {"login": True, "superuser": False, "createdb": False,
                                   "createrole": False, "replication": False, "inherit": True,
                                   "connection_limit": -1}
    return RoleFacts({**base, **attributes}, verifier)


def test_role_plans() -> None:
    pencil, verifier = SERVER_VERIFIERS["ascii"]
    task = postgres.role("app", password=Secret(pencil), createdb=True)
    assert task.compare(None).render() == ("state: absent -> present\nlogin: (none) -> true\n"
                                           "createdb: (none) -> true\npassword: (none) -> (secret)")
    assert not task.compare(role_facts(verifier, createdb=True))
    assert task.compare(role_facts(verifier)).render() == "createdb: false -> true"
    other = postgres.role("app", password=Secret("other"), login=False, connection_limit=3)
    assert other.compare(role_facts(verifier)).render() == (
        "login: true -> false\nconnection_limit: -1 -> 3\npassword: (secret) -> (new secret)")
    md5 = "md5" + "0" * 32
    assert task.compare(role_facts(md5, createdb=True)).render() == \
        "password: (secret) -> (new secret)"
    assert not postgres.role("app").compare(role_facts(None))  # password not managed
    assert postgres.role("app", state="absent").compare(role_facts()).render() == \
        "state: present -> absent"
    assert pencil not in repr(task.secrets) and task.secrets == (Secret(pencil),)
    with pytest.raises(ConfigError, match="give the password as a Secret"):
        postgres.role("app", password=pencil)  # type: ignore[arg-type]


def test_role_statement_shows_no_verifier() -> None:
    options, shown = postgres.roles._role_options({"login": True, "createdb": False,
                                             "connection_limit": 4}, "SCRAM-SHA-256$x", True)
    assert shown == "LOGIN NOCREATEDB CONNECTION LIMIT 4 PASSWORD ********"
    assert options.as_string(None) == \
        "LOGIN NOCREATEDB CONNECTION LIMIT 4 PASSWORD 'SCRAM-SHA-256$x'"
    assert postgres.roles._role_options({}, None, True)[1] == "PASSWORD NULL"


def test_extension_plans() -> None:
    offered = ("1.4", "1.7", "1.8")
    absent = ExtensionFacts(None, None, offered, "1.8")
    installed = ExtensionFacts("1.7", "public", offered, "1.8", relocatable=True)
    task = postgres.extension("hstore", db="app")
    assert task.compare(absent).render() == "state: absent -> present\nversion: (none) -> 1.8"
    assert not task.compare(installed)
    pinned = postgres.extension("hstore", db="app", version="1.8", schema="ext")
    assert pinned.compare(installed).render() == "version: 1.7 -> 1.8\nschema: public -> ext"
    with pytest.raises(TaskError, match="cannot be moved to 'ext'"):
        pinned.compare(ExtensionFacts("1.8", "public", offered, "1.8", relocatable=False))
    with pytest.raises(TaskError, match=r"no version '9'; available: 1.4, 1.7, 1.8"):
        postgres.extension("hstore", db="app", version="9").compare(installed)
    with pytest.raises(TaskError, match="'nope' is not available on the server"):
        postgres.extension("nope", db="app").compare(ExtensionFacts(None, None, (), None))
    gone = postgres.extension("hstore", db="app", state="absent")
    assert gone.compare(installed).render() == "state: present -> absent"
    assert not gone.compare(absent)


def test_privilege_plans_and_statements() -> None:
    task = postgres.privilege("app", "select, insert", on="table", objects=["a", "b"], db="d")
    assert task.privileges == ("INSERT", "SELECT")
    held = {"a": frozenset({"SELECT"}), "b": frozenset({"SELECT", "INSERT", "UPDATE"})}
    assert task.compare(held).render() == \
        "table public.a privileges of app: SELECT -> INSERT,SELECT"
    revoke = postgres.privilege("app", "ALL", on="table", objects="a", db="d", state="absent")
    assert revoke.compare({"a": held["a"]}).render() == \
        "table public.a privileges of app: SELECT -> (none)"
    assert task.statement("GRANT", "a", {"SELECT", "INSERT"}).as_string(None) == \
        'GRANT INSERT, SELECT ON TABLE "public"."a" TO "app"'
    public = postgres.privilege("PUBLIC", "temp", on="database", objects="d", state="absent")
    assert public.statement("REVOKE", "d", {"TEMPORARY"}).as_string(None) == \
        'REVOKE TEMPORARY ON DATABASE "d" FROM PUBLIC'
    assert postgres.privilege("app", "ALL", on="sequence", objects="ALL", db="d").all
    with pytest.raises(ConfigError, match="privilege 'INSERT' does not apply to a schema"):
        postgres.privilege("app", "insert", on="schema", objects="s", db="d")
    with pytest.raises(ConfigError, match="on must be one of database, schema, table"):
        postgres.privilege("app", "ALL", on="view", objects="v", db="d")  # type: ignore[arg-type]


# -- data checks -------------------------------------------------------------------------


def test_count_differences_and_table() -> None:
    baseline = {"orders": 1000, "items": 10, "gone": 5, "empty": 0}
    now = {"orders": 960, "items": 12, "empty": 0}
    assert count_differences(baseline, now, tolerance=0.05) == [
        postgres.CountDifference("items", 10, 12, 0), postgres.CountDifference("gone", 5, None, 0)]
    assert [d.table for d in count_differences(baseline, now, absolute=2)] == ["orders", "gone"]
    assert render_differences(count_differences(baseline, now)).splitlines() == [
        "table   baseline      now   difference  allowed",
        "orders      1000      960  -40 (-4.0%)       ±0",
        "items         10       12  +2 (+20.0%)       ±0",
        "gone           5  missing            -       ±0"]
    with pytest.raises(ConfigError, match=r"give 'table' or 'schema\.table'"):
        postgres.snapshot_counts("app", ["a.b.c"])


# -- backups -------------------------------------------------------------------------------

DIGEST = "ab" * 32
LISTED = ["file 2048 1700000000 600", f"sidecar {DIGEST}  app-d1.dump", f"actual {DIGEST}",
          "list ok"]


def dump(*replace: str) -> DumpFacts:
    lines = list(LISTED)
    for item in replace:
        key = item.split(" ", 1)[0]
        lines = [item if line.split(" ", 1)[0] == key else line for line in lines]
    return parse_dump(lines, "/var/backups/shop/app-d1.dump")


def test_dump_facts_and_problems() -> None:
    good = dump()
    assert good.exists and good.size == 2048 and good.mode == 0o600 and good.recorded == DIGEST
    assert good.problems() == []
    assert dump("file -").problems() == ["does not exist"]
    assert dump("list fail pg_restore: error: input file is too short").problems() == [
        "is not a pg_dump custom-format archive (pg_restore: error: input file is too short)"]
    assert dump("actual " + "cd" * 32).problems() == [
        "checksum mismatch: /var/backups/shop/app-d1.dump.sha256 records abababababab..., "
        "the file has cdcdcdcdcdcd..."]
    assert dump("sidecar -").problems() == [
        "has no checksum file /var/backups/shop/app-d1.dump.sha256"]
    assert dump("sidecar -").problems(require_checksum=False) == []
    assert dump(f"sidecar {DIGEST}  other.dump").problems()[0].endswith(
        "is not a sha256sum line for app-d1.dump")
    assert dump(f"sidecar {DIGEST} *app-d1.dump").problems() == []  # binary-mode marker
    with pytest.raises(TaskError, match="unexpected dump probe output"):
        dump("file 12 x")


def test_retention() -> None:
    day = 86400.0
    now = 100 * day
    entries = [("a.dump", now - 10 * day), ("b.dump", now - 5 * day), ("c.dump", now - 2 * day),
               ("d.dump", now)]
    assert retention.expired(entries, keep_last=None, keep_days=None, now=now) == []
    assert retention.expired(entries, keep_last=2, keep_days=None, now=now) == ["a.dump", "b.dump"]
    assert retention.expired(entries, keep_last=None, keep_days=3, now=now) == ["a.dump", "b.dump"]
    # either rule keeps
    assert retention.expired(entries, keep_last=2, keep_days=7, now=now) == ["a.dump"]
    assert retention.expired(entries, keep_last=1, keep_days=None, now=now, keep=["a.dump"]) == [
        "b.dump", "c.dump"]


def fake_conn() -> Connection:
    host = Host(name="db-1", address="198.18.0.77",
                vars={"postgres_password": "x", "postgres_port": 5432})
    return cast(Connection, SimpleNamespace(name="db-1", host=host, secrets=set(), log=[]))


def backup_facts(task: postgres.BackupTask, *lines: str) -> dict[str, Any]:
    facts = task.parse("\n".join(["now 1700000100", *lines]))
    facts[postgres.session.SCOPE_KEY] = postgres.session.Scope(task, fake_conn())
    return facts


def test_backup_plan_of_a_verified_dump_needs_no_database() -> None:
    task = postgres.backup("app", app="shop", deploy_id="d1", keep_last=1)
    entries = ["entry 1600000000.5 10 1 app-d0.dump", "entry 1700000000.0 2048 1 app-d1.dump",
               "entry 1500000000 10 1 other-x.dump", "entry bad line"]
    facts = backup_facts(task, *LISTED, "space 100 4096", *entries)
    assert task.plan(fake_conn(), facts).render() == "remove: app-d0.dump -> (none)"
    assert postgres.PgTask.scope(facts).data == {
        "database": "app", "deploy_id": "d1", "path": "/var/backups/shop/app-d1.dump",
        "size": 2048, "sha256": DIGEST, "age": 100.0, "kept": {"app-d1.dump": [
            "newest verified backup", "just written", "among the 1 newest deploy backups"]}}
    loose = backup_facts(task, *[line.replace(" 600", " 644") for line in LISTED])
    assert task.plan(fake_conn(), loose).render() == "mode: 0644 -> 0600"


def test_backup_names_are_checked() -> None:
    assert postgres.backup_path("shop", "app", "20250101T1200-ab12") == \
        "/var/backups/shop/app-20250101T1200-ab12.dump"
    assert postgres.backup_path("shop", "app", "d1", directory="/srv/bk/") == "/srv/bk/app-d1.dump"
    for app, db, deploy_id, message in (
            ("shop", "app-x", "d1", "database name 'app-x'"),
            ("shop", "a" * 39, "d1", "1 to 38"),
            ("shop", "app", "../x", "deploy id '../x'"),
            ("../etc", "app", "d1", "app name '../etc'")):
        with pytest.raises(ConfigError, match=message):
            postgres.backup_path(app, db, deploy_id)
    with pytest.raises(ConfigError, match="keep_last must be at least 1"):
        postgres.backup("app", app="shop", deploy_id="d1", keep_last=0)


def test_client_commands() -> None:
    settings = PgSettings(port=5433, user="postgres", password=Secret("pw"))
    prefix, stdin = Access.socket().command(settings, "pg_dump")
    assert (prefix, stdin) == ("runuser -u postgres -- pg_dump --username=postgres --port=5433 "
                               "--no-password", None)
    prefix, stdin = Access.tcp(bin_dir="/usr/lib/postgresql/15/bin").command(settings,
                                                                             "pg_restore")
    assert prefix == ("/usr/lib/postgresql/15/bin/pg_restore --host=127.0.0.1 "
                      "--username=postgres --port=5433 --no-password")
    assert stdin == b"pw\n" and "pw" not in prefix
    with pytest.raises(ConfigError, match="over TCP needs a password"):
        Access.tcp().command(PgSettings(), "pg_dump")


def test_docker_access_command_lines() -> None:
    docker = Access.docker("shop db", os_user="pg")
    prefix, stdin = docker.command(PgSettings(port=5432, user="app"), "pg_dump")
    assert (prefix, stdin) == ("docker exec -i -u pg 'shop db' pg_dump --username=app "
                               "--port=5432 --no-password", None)
    prefix, stdin = docker.command(PgSettings(user="app", password=Secret("s3cret")),
                                   "pg_restore")
    assert prefix == ("docker exec -i -e PGPASSWORD -u pg 'shop db' pg_restore --username=app "
                      "--port=5432 --no-password")
    assert stdin == b"s3cret\n" and "s3cret" not in prefix
    assert docker.reader() == "docker exec -i 'shop db' pg_restore"
    with pytest.raises(ConfigError, match="needs a container name"):
        Access("docker")


def test_access_from_host_vars() -> None:
    def settings(**vars: object) -> PgSettings:
        return PgSettings.from_host(Host(name="db-1", address="198.18.0.7", vars=vars))

    assert Access.from_settings(settings()) == Access.socket()
    assert Access.from_settings(settings(), os_user=None) == Access.tcp()
    assert Access.from_settings(settings(postgres_access="docker", postgres_container="pg")) \
        == Access.docker("pg")
    assert Access.from_settings(settings(postgres_access="socket",
                                         postgres_os_user="pg15")) == Access.socket("pg15")
    with pytest.raises(ConfigError, match="postgres_access must be socket, tcp or docker"):
        settings(postgres_access="ssh")
    task = postgres.backup("app", app="shop", deploy_id="d1", access=Access.docker("pg"))
    assert "docker exec -i pg pg_restore --list < " in task.probe_script()


# -- restore bookkeeping -----------------------------------------------------------------


def test_restore_record_and_settings() -> None:
    record = postgres.swap.marker_text({"sha256": DIGEST, "previous": "app_old_1"})
    assert parse_marker(record) == {"sha256": DIGEST, "previous": "app_old_1"}
    assert parse_marker("a comment") is None and parse_marker(None) is None
    assert parse_marker("deploykit restore {broken") is None
    assert split_guc_list('"$user", public, "odd, ""name"""') == [
        "$user", "public", 'odd, "name"']
    assert postgres.swap.setting_sql("search_path", '"$user", public').as_string(None) == \
        "\"search_path\" = '$user', 'public'"
    assert postgres.swap.setting_sql("app.mode", "a b").as_string(None) == \
        "\"app\".\"mode\" = 'a b'"


def test_sql_tasks_send_no_shell_probe() -> None:
    """Their probe is SQL, read in plan(): the batched shell probe is a no-op and a probe
    alone sends nothing (the fake connection has no ``run``)."""
    for task in (postgres.role("app"), postgres.database("app"),
                 postgres.extension("citext", db="app"), postgres.undo_restore("app"),
                 postgres.snapshot_counts("app", ["t"]), postgres.query_check("app", "SELECT 1")):
        assert task.probe_script() == ":" and task.parse("") == {}
        assert task.probe(fake_conn()) == {}
    with pytest.raises(ConfigError, match="the query is empty"):
        postgres.query_check("app", "  ")
