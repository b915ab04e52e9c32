"""Configuration files of one lab host's services, as text.

Pure functions: no I/O. ``deploykit.testing.lab`` writes their output into the
host's private directories before the host starts.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

SSHD_CONFIG = """\
# sshd of one deploykit lab host (written by the lab).
Port 22
ListenAddress 0.0.0.0
HostKey /etc/ssh/ssh_host_ed25519_key
PidFile /run/sshd.pid
PermitRootLogin prohibit-password
PubkeyAuthentication yes
AuthorizedKeysFile /etc/ssh/authorized_keys.d/%u
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
UseDNS no
PrintMotd no
PrintLastLog no
MaxSessions 64
MaxStartups 64:30:128
ClientAliveInterval 30
Subsystem sftp internal-sftp
"""

NGINX_CONF = """\
# nginx of one deploykit lab host (written by the lab).
user www-data;
worker_processes 1;
pid /run/nginx.pid;
error_log /var/log/nginx/error.log;
include /etc/nginx/modules-enabled/*.conf;

events {
    worker_connections 256;
}

http {
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    access_log /var/log/nginx/access.log;
    sendfile on;
    keepalive_timeout 30;
    include /etc/nginx/conf.d/*.conf;
    include /etc/nginx/sites-enabled/*;
}
"""

NGINX_DEFAULT_SITE = """\
# Default site of a deploykit lab host: answers with the host's name.
server {
    listen 80 default_server;
    server_name _;
    location / {
        default_type text/plain;
        return 200 "$hostname\\n";
    }
}
"""

SUPERVISORD_CONF = """\
; supervisord of one deploykit lab host (written by the lab).
[unix_http_server]
file=/run/supervisor.sock
chmod=0700

[supervisord]
logfile=/var/log/supervisor/supervisord.log
pidfile=/run/supervisord.pid
childlogdir=/var/log/supervisor

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix:///run/supervisor.sock

[include]
files = /etc/supervisor/conf.d/*.conf
"""

REDIS_CONF = """\
# redis-server of one deploykit lab host (written by the lab).
bind 0.0.0.0
port 6379
protected-mode no
daemonize yes
pidfile /run/redis/redis-server.pid
logfile /var/log/redis/redis-server.log
dir /var/lib/redis
save ""
"""

POSTGRESQL_CONF_EXTRA = """
# deploykit lab settings
listen_addresses = '*'
port = 5432
unix_socket_directories = '/run/postgresql'
shared_buffers = 16MB
max_connections = 40
"""

PG_HBA_EXTRA = """
# deploykit lab: every lab network (198.18.0.0/15) and the controller
host all all 198.18.0.0/15 scram-sha-256
"""

def deploy_sudoers(user: str) -> str:
    """/etc/sudoers.d entry of the lab's non-root deploy user: passwordless sudo."""
    return f"# deploykit lab: the deploy user may run anything as root without a password\n" \
           f"{user} ALL=(ALL:ALL) NOPASSWD: ALL\n"


def dockerd_config(cgroup_parent: str) -> str:
    """daemon.json of a lab host's own dockerd: everything inside the host's private
    /var/lib and /run, containers in ``cgroup_parent``, no network setup of its own
    (no bridge, no iptables or NAT: containers use the host's network)."""
    return json.dumps({
        "data-root": "/var/lib/docker",
        "exec-root": "/run/docker",
        "pidfile": "/run/docker.pid",
        "hosts": ["unix:///run/docker.sock"],
        "bridge": "none",
        "iptables": False,
        "ip6tables": False,
        "ip-masq": False,
        "storage-driver": "overlay2",
        "exec-opts": ["native.cgroupdriver=cgroupfs"],
        "cgroup-parent": cgroup_parent,
        "log-driver": "json-file",
        "log-opts": {"max-size": "1m", "max-file": "2"},
        "userland-proxy": False,
    }, indent=2) + "\n"


# A plain, fast shell for lab logins: Debian's root .bashrc may run slow init.
ROOT_BASHRC = "# deploykit lab host: plain shell, no init\n"
ROOT_PROFILE = "# deploykit lab host\n"


def etc_hosts(own_name: str, addresses: Mapping[str, str]) -> str:
    """The host's private /etc/hosts: localhost, its own name, and every lab host."""
    lines = ["127.0.0.1 localhost", f"127.0.1.1 {own_name}", "::1 localhost ip6-localhost"]
    lines += [f"{address} {name}" for name, address in addresses.items()]
    return "\n".join(lines) + "\n"


def ssh_client_config(
    hosts: Mapping[str, str], identity_file: str, known_hosts: str, user: str = "root",
    jumps: Mapping[str, str] | None = None,
) -> str:
    """An OpenSSH client config naming every lab host, with strict host key checking;
    ``jumps`` maps a host reached only through a bastion to the bastion's name."""
    blocks = []
    for name, address in hosts.items():
        jump = (jumps or {}).get(name)
        blocks.append(
            f"Host {name}\n"
            f"    HostName {address}\n"
            f"    User {user}\n"
            f"    IdentityFile {identity_file}\n"
            f"    IdentitiesOnly yes\n"
            f"    UserKnownHostsFile {known_hosts}\n"
            f"    StrictHostKeyChecking yes\n"
            + (f"    ProxyJump {jump}\n" if jump else "")
        )
    return "\n".join(blocks)
