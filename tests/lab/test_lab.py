"""The lab fleet itself: real hosts, real services, reached over real SSH."""

from __future__ import annotations

import dataclasses
import json
import socket
import subprocess
import urllib.request
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
import redis

from deploykit.connection import Connection
from deploykit.errors import HostKeyError
from deploykit.inventory import Inventory
from deploykit.testing.lab import Lab

pytestmark = pytest.mark.lab


def test_every_host_answers_hostname_with_its_own_name(
    lab: Lab, lab_connection: Callable[[str], Connection]
) -> None:
    for spec in lab.specs:
        assert lab_connection(spec.name).run("hostname").stdout.strip() == spec.name


def test_each_host_sees_only_its_own_srv_and_var_log(
    lab: Lab, lab_connection: Callable[[str], Connection]
) -> None:
    web1, web2 = lab_connection("web-1"), lab_connection("web-2")
    try:
        web1.run("touch /srv/only-on-web-1 /var/log/only-on-web-1")
        assert web1.run("ls /srv /var/log").stdout.count("only-on-web-1") == 2
        assert "only-on-web-1" not in web2.run("ls /srv /var/log").stdout
        assert not Path("/srv/only-on-web-1").exists()  # nor on the machine itself
        assert not Path("/var/log/only-on-web-1").exists()
    finally:
        web1.run("rm -f /srv/only-on-web-1 /var/log/only-on-web-1")


def test_private_tmp_run_and_hostname(lab_host: Callable[[str], object]) -> None:
    host = lab_host("web-2")
    assert host.file("/tmp").mode == 0o1777  # type: ignore[attr-defined]
    assert host.mount_point("/tmp").filesystem == "tmpfs"  # type: ignore[attr-defined]
    assert host.mount_point("/run").filesystem == "tmpfs"  # type: ignore[attr-defined]
    assert host.check_output("hostname") == "web-2"  # type: ignore[attr-defined]
    # a plain login shell: no pyenv or other init from the machine's root .bashrc
    assert "pyenv" not in host.check_output("cat ~/.bashrc; echo $PATH")  # type: ignore[attr-defined]


def test_web_hosts_listen_and_nginx_answers_from_root_namespace(
    lab: Lab, lab_host: Callable[[str], object]
) -> None:
    for spec in lab.specs:
        if "web" not in spec.roles:
            continue
        assert lab_host(spec.name).socket("tcp://0.0.0.0:80").is_listening  # type: ignore[attr-defined]
        with urllib.request.urlopen(f"http://{lab.address(spec.name)}/", timeout=5) as resp:
            assert resp.status == 200
            assert resp.read().decode().strip() == spec.name


def test_supervisord_runs_on_web_hosts(lab_host: Callable[[str], object]) -> None:
    out = lab_host("web-1").check_output("supervisorctl -c /etc/supervisor/supervisord.conf pid")  # type: ignore[attr-defined]
    assert out.strip().isdigit()


def test_postgres_accepts_psycopg_connection_from_controller(
    lab: Lab, lab_inventory: Inventory
) -> None:
    db = lab_inventory.host("db-1")
    password = Path(db.vars["postgres_password_file"]).read_text()
    with psycopg.connect(host=db.address, port=db.vars["postgres_port"], user="postgres",
                         password=password, dbname="postgres", connect_timeout=5) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        assert conn.execute("SHOW server_version").fetchone()[0].startswith("15.")  # type: ignore[index]


def test_postgres_refuses_a_wrong_password(lab_inventory: Inventory) -> None:
    db = lab_inventory.host("db-1")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(host=db.address, user="postgres", password="wrong",
                        dbname="postgres", connect_timeout=5)


def test_redis_answers_ping(lab_inventory: Inventory) -> None:
    db = lab_inventory.host("db-1")
    client = redis.Redis(host=db.address, port=db.vars["redis_port"], socket_timeout=5)
    assert client.ping() is True


def test_inventory_carries_roles_and_versions(lab_inventory: Inventory) -> None:
    assert [h.name for h in lab_inventory.select("web")] == ["web-1", "web-2"]
    db = lab_inventory.host("db-1")
    assert db.vars["roles"] == ["db"]
    assert db.vars["postgresql_version"].startswith("15.")
    assert lab_inventory.host("web-1").vars["nginx_version"]


def test_unknown_host_key_is_refused(lab_inventory: Inventory, tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    host = dataclasses.replace(lab_inventory.host("web-1"), known_hosts=str(empty))
    with pytest.raises(HostKeyError, match=r"unknown.*ssh-keyscan"):
        Connection(host).open()
    assert empty.read_text() == ""  # never added on its own


def test_changed_host_key_is_refused(lab: Lab, lab_inventory: Inventory, tmp_path: Path) -> None:
    # known_hosts that claims web-1's address has web-2's key: what a MITM looks like
    web2_key = next(line.split(" ", 1)[1] for line in lab.known_hosts.read_text().splitlines()
                    if line.startswith(lab.address("web-2") + " "))
    wrong = tmp_path / "known_hosts"
    wrong.write_text(f"{lab.address('web-1')} {web2_key}\n")
    host = dataclasses.replace(lab_inventory.host("web-1"), known_hosts=str(wrong))
    with pytest.raises(HostKeyError, match="CHANGED"):
        Connection(host).open()


def test_service_can_be_stopped_and_started_for_fault_injection(
    lab: Lab, lab_inventory: Inventory
) -> None:
    db = lab_inventory.host("db-1")
    lab.stop_service("db-1", "redis")
    try:
        assert lab.host_script("db-1", "status", "redis").stdout.strip() == "redis stopped"
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((db.address, db.vars["redis_port"]), timeout=2)
    finally:
        lab.start_service("db-1", "redis")
    assert redis.Redis(host=db.address, socket_timeout=5).ping() is True


def test_lab_status_reports_every_service_running(lab: Lab) -> None:
    statuses = {s.name: s for s in lab.status()}
    assert set(statuses) == {"web-1", "web-2", "db-1"}
    assert statuses["db-1"].services == {"sshd": "running", "postgres": "running",
                                          "redis": "running"}
    assert statuses["web-1"].services == {"sshd": "running", "nginx": "running",
                                           "supervisord": "running"}
    assert all(s.up for s in statuses.values())


def test_invoke_lab_status_prints_the_fleet(lab: Lab, project_root: Path) -> None:
    out = subprocess.run([str(project_root / ".venv/bin/invoke"), "lab.status"],
                         cwd=project_root, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    for spec in lab.specs:
        assert spec.name in out.stdout
        assert lab.address(spec.name) in out.stdout
    assert "postgres" in out.stdout and "nginx" in out.stdout


def test_fleet_file_matches_specs(lab: Lab) -> None:
    data = json.loads((lab.state_dir / "fleet.json").read_text())
    assert data == [{"name": s.name, "roles": list(s.roles)} for s in lab.specs]


def test_lab_tests_get_a_longer_timeout_than_the_default(request: pytest.FixtureRequest) -> None:
    marker = request.node.get_closest_marker("timeout")  # given by tests/conftest.py
    assert marker is not None and marker.args[0] > float(request.config.getini("timeout"))


def test_deploy_user_logs_in_with_the_lab_key_and_has_passwordless_sudo(lab: Lab) -> None:
    inventory = Inventory.from_dict(lab.inventory(user="deploy"), source="<lab deploy>")
    host = inventory.host("web-1")
    assert host.user == "deploy" and host.become
    conn = Connection(dataclasses.replace(host, become=False))
    try:
        assert conn.run("id -un; echo $HOME").stdout.split() == ["deploy", "/home/deploy"]
        assert conn.run("sudo -n id -u").stdout.strip() == "0"
        assert conn.run("touch /srv/x", check=False).exit_code != 0  # not root without sudo
    finally:
        conn.close()
    become = Connection(host)  # the inventory's become: deploykit runs commands with sudo -n
    try:
        assert become.run("id -un").stdout.strip() == "root"
    finally:
        become.close()
    # the machine's own users, /etc and /home are untouched
    assert "deploy:" not in Path("/etc/passwd").read_text()
    assert not Path("/home/deploy").exists()


def test_deploy_user_has_no_password_anywhere(lab: Lab) -> None:
    shadow = lab.nsenter("web-1", ["cat", "/etc/shadow"]).stdout
    assert shadow and all(line.split(":")[1] == "*" for line in shadow.splitlines())


def test_etc_changes_on_a_host_stay_in_that_host(
    lab: Lab, lab_connection: Callable[[str], Connection]
) -> None:
    web1 = lab_connection("web-1")
    try:
        web1.run("useradd -M -s /usr/sbin/nologin dklabprobe && echo x > /etc/dklab-probe")
        assert "dklabprobe:" in web1.run("cat /etc/passwd").stdout
        assert "dklabprobe:" not in lab_connection("web-2").run("cat /etc/passwd").stdout
        assert "dklabprobe:" not in Path("/etc/passwd").read_text()  # nor on the machine
        assert not Path("/etc/dklab-probe").exists()
    finally:
        web1.run("userdel dklabprobe; rm -f /etc/dklab-probe", check=False)
