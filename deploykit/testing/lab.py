"""The lab: a fleet of real Linux hosts on this machine, for tests and demos.

Each lab host is

* a network namespace ``dklab-<name>`` with a veth pair on the bridge ``dklab0``
  and its own address in the lab's network, a block of 198.18.0.0/15 (the
  machine's root namespace is the network's first address and reaches every
  host); an ``unreachable 198.18.0.0/15`` route keeps every lab address on the
  machine, and a lab refuses a network that overlaps a live lab's;
* its own mount, UTS and IPC namespaces, held open by an *anchor* process
  (``sleep infinity``): private /etc/ssh, /etc/nginx, /etc/supervisor,
  /etc/redis, /etc/hosts, /srv, /var/log, /var/lib, /var/backups, /root,
  tmpfs /run, /tmp and /dev/shm, and its own hostname;
* its own sshd (own host key, key-only login for the lab's client key), and per
  role nginx + supervisord (``web``), PostgreSQL 15 + redis-server (``db``) or
  its own dockerd (``docker``, see below); a ``light`` host runs sshd only
  (fleets of up to :data:`MAX_LIGHT_HOSTS` for scale tests);
* its own /etc: an overlay of the machine's (useradd, sudoers and every other
  change stay in the host), with a ``deploy`` user (no password for anyone in its
  /etc/shadow; home in the private /home) with passwordless sudo, logging in with
  the lab's client key like root (``Lab.inventory(user="deploy")``).

A ``docker`` host runs its own dockerd (and the containerd dockerd manages)
inside its namespaces: ``--bridge=none``, no iptables, data root
/var/lib/docker and exec root /run/docker in the host's private /var/lib and
/run, containers in the cgroup ``<lab>-<host>`` (so :meth:`Lab.down` finds and
kills them even when they left the host's network namespace) and on the host's
network (``network_mode: host``). Its overlay mounts live in the host's private
mount namespace and vanish with it. The base image ``dkbase:bookworm``
(``debootstrap --variant=minbase --include=python3 bookworm`` from the machine's
Debian mirror) is built once on the controller, cached as a tarball in
``STATE_ROOT/base-images`` (kept by :meth:`Lab.down`) and imported into each
docker host's dockerd.

Programs (/usr) are the machine's; only configuration and state are private.
Everything a lab creates is named after it (``dklab`` by default: namespaces
``dklab-<host>``, bridge ``dklab0``, veths ``dklab<n>``) and its files live in
``STATE_ROOT/<name>``, so :meth:`Lab.down` can find and remove it even when
the process that created it crashed.  Nothing touches the machine's hostname,
/etc or /root.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TypeVar

import yaml

from deploykit.errors import LabError
from deploykit.testing import labconfig

T = TypeVar("T")
STATE_ROOT = Path(os.environ.get("DEPLOYKIT_LAB_DIR", "/var/cache/deploykit-lab"))
# The default lab takes 198.18.0.0/26; other labs (the lifecycle tests, the
# benchmark, parallel sessions, scale labs) take other blocks of 198.18.0.0/15.
# DEPLOYKIT_LAB_NAME and DEPLOYKIT_LAB_NETWORK choose another lab for invoke
# lab.* and the pytest plugin.
DEFAULT_NAME = os.environ.get("DEPLOYKIT_LAB_NAME", "dklab")
DEFAULT_NETWORK = os.environ.get("DEPLOYKIT_LAB_NETWORK", "198.18.0.0/26")
DEFAULT_INNER_NETWORK = os.environ.get("DEPLOYKIT_LAB_INNER_NETWORK") or None
"""The inner network of a lab with a bastion (none by default)."""
LAB_RANGE = "198.18.0.0/15"  # every lab lives in here; nothing in it leaves the machine
LAB_ROUTE_METRIC = "4000"
HOST_OFFSET = 11  # first host is the network's 11th address: 198.18.0.11
MAX_HOSTS = 20
"""Hosts in a fleet with services (web, db, docker)."""
MAX_LIGHT_HOSTS = 250
"""Hosts in a fleet of ``light`` hosts only (sshd and a shell)."""
DEPLOY_USER = "deploy"
RESET_WORKERS = 8

ROLE_SERVICES: dict[str, tuple[str, ...]] = {
    "web": ("nginx", "supervisord"),
    "db": ("postgres", "redis"),
    "docker": ("dockerd",),
    "light": (),
    "bastion": (),
}
ROLE_PACKAGES: dict[str, tuple[str, ...]] = {
    "web": ("nginx", "supervisor"),
    "db": ("postgresql-15", "redis-server"),
    "docker": ("docker.io", "docker-compose"),
    "light": (),
    "bastion": (),
}
VERSION_VARS = {"docker.io": "docker_version", "docker-compose": "docker_compose_version"}
"""Inventory vars for package versions whose name the default rule would garble."""
REQUIRED_PROGRAMS: dict[str, str] = {
    "ip": "iproute2",
    "unshare": "util-linux",
    "nsenter": "util-linux",
    "runuser": "util-linux",
    "sudo": "sudo",
    "/usr/sbin/sshd": "openssh-server",
    "ssh-keygen": "openssh-client",
    "nginx": "nginx",
    "supervisord": "supervisor",
    "redis-server": "redis-server",
    "/usr/lib/postgresql/15/bin/initdb": "postgresql-15",
    "dockerd": "docker.io",
    "docker-compose": "docker-compose",
}
BASE_IMAGE = "dkbase:bookworm"
BASE_IMAGE_DIR = "base-images"  # under STATE_ROOT; not a lab name (those have no '-')
BASE_SUITE = "bookworm"
BUILD_TIMEOUT = 900.0
# Directories each host gets a private copy of (bind-mounted over the machine's).
PRIVATE_DIRS = (
    "etc/ssh", "etc/nginx", "etc/supervisor", "etc/redis",
    "srv", "var/log", "var/lib", "var/backups", "root", "home",
)
# The rest of /etc is an overlay per host: the machine's /etc below, the host's
# changes (its users, sudoers, anything a task writes) in ETC_UPPER, never the machine's.
ETC_UPPER, ETC_WORK = "etc-upper", "etc-work"
PG_DATA = "var/lib/postgresql/15/main"
START_TIMEOUT = 15.0


RESET_SCRIPT = (
    "find /srv /var/backups /tmp -mindepth 1 -maxdepth 1 -exec rm -rf {} +; "
    "rm -rf /var/lib/deploykit; "
)
RESET_WEB_SCRIPT = (
    "rm -f /etc/supervisor/conf.d/*.conf /var/log/supervisor/*.log; "
    "supervisorctl -c /etc/supervisor/supervisord.conf update >/dev/null; "
    "rm -rf /etc/nginx/conf.d/* /etc/nginx/deploykit /etc/nginx/sites-available/*; "
    "find /etc/nginx/sites-enabled -mindepth 1 ! -name default -exec rm -f {} +; "
    f"printf '%s' {shlex.quote(labconfig.NGINX_DEFAULT_SITE)} > /etc/nginx/sites-enabled/default; "
    "nginx -s reload"
)
RESET_DOCKER_SCRIPT = (
    "ids=$(docker ps -aq); [ -z \"$ids\" ] || docker rm -f $ids >/dev/null; "
)


@dataclass(frozen=True)
class LabHostSpec:
    """One host to build: its name, roles (``web``, ``db``, ``docker``, ``light``,
    ``bastion``) and whether it lives on the lab's inner network (reached only through
    a ``bastion`` host, which has an address on both networks)."""

    name: str
    roles: tuple[str, ...]
    inner: bool = False


@dataclass
class LabHostStatus:
    """What :meth:`Lab.status` reports for one host."""

    name: str
    address: str
    roles: tuple[str, ...]
    up: bool
    services: dict[str, str] = field(default_factory=dict)


def light_fleet(count: int) -> list[LabHostSpec]:
    """``count`` light hosts (sshd and a shell only): ``node-1`` .. ``node-<count>``."""
    if not 1 <= count <= MAX_LIGHT_HOSTS:
        raise LabError(f"a light lab has 1 to {MAX_LIGHT_HOSTS} hosts, not {count}")
    return [LabHostSpec(f"node-{i}", ("light",)) for i in range(1, count + 1)]


def bastion_fleet(web: int = 2) -> list[LabHostSpec]:
    """A bastion topology: ``bastion-1`` on the lab network and the inner one;
    ``web-1`` .. ``web-<web>`` and ``db-1`` on the inner network only."""
    return [LabHostSpec("bastion-1", ("bastion",))] + [
        LabHostSpec(f"web-{i}", ("web",), inner=True) for i in range(1, web + 1)
    ] + [LabHostSpec("db-1", ("db",), inner=True)]


def is_light(spec: LabHostSpec) -> bool:
    """True for a host that runs sshd only."""
    return set(spec.roles) <= {"light"}


def default_fleet(count: int = 3) -> list[LabHostSpec]:
    """``count`` hosts: ``web-1`` .. ``web-(count-1)`` and one ``db-1``."""
    if not 1 <= count <= MAX_HOSTS:
        raise LabError(f"a lab has 1 to {MAX_HOSTS} hosts, not {count}")
    if count == 1:
        return [LabHostSpec("web-1", ("web",))]
    return [LabHostSpec(f"web-{i}", ("web",)) for i in range(1, count)] + [
        LabHostSpec("db-1", ("db",))
    ]


def parse_fleet(text: str) -> list[LabHostSpec]:
    """Parse ``"web-1:web,web-2:web,db-1:db+web"``, a host count like ``"10"``,
    ``"light:200"`` (200 light hosts) or ``"bastion"`` (:func:`bastion_fleet`);
    ``"web-1:web@inner"`` puts a host on the inner network (behind a ``bastion`` host)."""
    text = text.strip()
    if text.isdigit():
        return default_fleet(int(text))
    light = re.fullmatch(r"light:(\d+)", text)
    if light:
        return light_fleet(int(light.group(1)))
    if text == "bastion":
        return bastion_fleet()
    specs = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        item, at, where = item.partition("@")
        if at and where != "inner":
            raise LabError(f"lab host {item!r}: '@{where}' is not a network; '@inner' is")
        name, _, roles = item.partition(":")
        role_list = tuple(r for r in roles.split("+") if r) if roles else ()
        unknown = [r for r in role_list if r not in ROLE_SERVICES]
        if unknown:
            raise LabError(f"unknown lab role {unknown[0]!r} for host {name!r}; "
                           f"roles: {', '.join(ROLE_SERVICES)}")
        specs.append(LabHostSpec(name, role_list, inner=bool(at)))
    return specs


def _run(argv: Sequence[str], *, check: bool = True, input: str | None = None,
         timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run a local command; on failure raise LabError with its stderr."""
    proc = subprocess.run(list(argv), capture_output=True, text=True, input=input,
                          timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise LabError(f"{' '.join(argv)} failed ({proc.returncode}): "
                       f"{(proc.stderr or proc.stdout).strip()}")
    return proc


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _pid_alive(pid: int) -> bool:
    """True when ``pid`` runs (a zombie, dead but not yet reaped, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


class Lab:
    """A fleet of lab hosts. :meth:`up` builds it, :meth:`down` removes every trace."""

    def __init__(
        self,
        hosts: Sequence[LabHostSpec] | None = None,
        *,
        name: str = DEFAULT_NAME,
        network: str = DEFAULT_NETWORK,
        state_dir: Path | str | None = None,
        inventory_path: Path | str | None = None,
        inventory_user: str = "root",
        inner_network: str | None = DEFAULT_INNER_NETWORK,
    ) -> None:
        self.specs = list(hosts) if hosts is not None else default_fleet()
        limit = MAX_LIGHT_HOSTS if all(is_light(s) for s in self.specs) else MAX_HOSTS
        if len(self.specs) > limit:
            raise LabError(f"a lab has at most {MAX_HOSTS} hosts ({MAX_LIGHT_HOSTS} when all "
                           f"are light), not {len(self.specs)}")
        names = [s.name for s in self.specs]
        if len(set(names)) != len(names):
            raise LabError(f"lab host names must be unique: {', '.join(names)}")
        if not re.fullmatch(r"[a-z][a-z0-9]{1,7}", name):
            raise LabError(f"lab name {name!r}: 2-8 lowercase letters and digits")
        self.name = name
        try:
            net = ipaddress.ip_network(network)
        except ValueError as exc:
            raise LabError(f"lab network {network!r}: {exc}") from None
        if not isinstance(net, ipaddress.IPv4Network) \
                or not net.subnet_of(ipaddress.IPv4Network(LAB_RANGE)):
            raise LabError(f"lab network {network} is outside {LAB_RANGE}, the range that "
                           "never leaves this machine")
        self.network = net
        wanted = len(self.specs)
        if self.network.num_addresses < HOST_OFFSET + wanted + 1:
            raise LabError(f"lab network {network} is too small for {wanted} hosts "
                           f"(they start at its {HOST_OFFSET}th address)")
        self.inner_network = self._inner_network(inner_network)
        self.inner_bridge = f"{name}1"
        self.gateway = str(self.network[1])
        self.bridge = f"{name}0"
        self.state_dir = Path(state_dir) if state_dir else STATE_ROOT / name
        self.inventory_path = Path(inventory_path) if inventory_path else None
        if inventory_user not in ("root", DEPLOY_USER):
            raise LabError(f"lab inventory user {inventory_user!r}: root or {DEPLOY_USER}")
        self.inventory_user = inventory_user
        self._host_script = resources.files("deploykit.testing").joinpath(
            "labhost.sh").read_text()

    def _inner_network(self, network: str | None) -> ipaddress.IPv4Network | None:
        needs = any(s.inner or "bastion" in s.roles for s in self.specs)
        if network is None:
            if needs:
                raise LabError("a lab with a bastion or inner hosts needs an inner network: "
                               f"set DEPLOYKIT_LAB_INNER_NETWORK to a block of {LAB_RANGE}")
            return None
        inner = ipaddress.ip_network(network)
        if not isinstance(inner, ipaddress.IPv4Network) \
                or not inner.subnet_of(ipaddress.IPv4Network(LAB_RANGE)):
            raise LabError(f"inner network {network} is outside {LAB_RANGE}")
        if inner.overlaps(self.network):
            raise LabError(f"inner network {network} overlaps the lab network {self.network}")
        if inner.num_addresses < HOST_OFFSET + len(self.specs) + 1:
            raise LabError(f"inner network {network} is too small for {len(self.specs)} hosts")
        return inner

    def networks(self) -> list[ipaddress.IPv4Network]:
        """The lab network, and the inner one when the lab has it."""
        return [self.network] + ([self.inner_network] if self.inner_network else [])

    # -- paths and addresses -------------------------------------------------

    @property
    def identity_file(self) -> Path:
        """The lab's SSH client private key."""
        return self.state_dir / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        """known_hosts with every lab host's key, for strict host key checking."""
        return self.state_dir / "known_hosts"

    @property
    def ssh_config(self) -> Path:
        """An OpenSSH client config naming every lab host."""
        return self.state_dir / "ssh_config"

    @property
    def postgres_password_file(self) -> Path:
        """Password of the ``postgres`` role on db hosts (mode 0600)."""
        return self.state_dir / "postgres.password"

    def address(self, name: str) -> str:
        """The lab address of host ``name`` (on the inner network for an inner host)."""
        if self.spec(name).inner:
            return self.inner_address(name)
        return str(self.network[HOST_OFFSET + self._index(name)])

    def inner_address(self, name: str) -> str:
        """Host ``name``'s address on the inner network (inner hosts and bastions)."""
        if self.inner_network is None:
            raise LabError(f"lab {self.name} has no inner network")
        return str(self.inner_network[HOST_OFFSET + self._index(name)])

    def bastion(self) -> str | None:
        """The name of the lab's bastion host, if it has one."""
        return next((s.name for s in self.specs if "bastion" in s.roles), None)

    def addresses(self) -> dict[str, str]:
        """Host name -> address, for every host in the fleet."""
        return {s.name: self.address(s.name) for s in self.specs}

    def unused_address(self) -> str:
        """An address inside this lab's network where no host answers (ARP goes
        unanswered: a connect times out), for unreachable-host tests: the one just below
        the first host's (never the gateway, never a /27's broadcast address)."""
        return str(self.network[HOST_OFFSET - 1])

    def spec(self, name: str) -> LabHostSpec:
        """The spec of host ``name``; LabError naming the fleet when unknown."""
        for s in self.specs:
            if s.name == name:
                return s
        raise LabError(f"no lab host {name!r}; hosts: {', '.join(s.name for s in self.specs)}")

    def _index(self, name: str) -> int:
        return self.specs.index(self.spec(name))

    def _host_dir(self, name: str) -> Path:
        return self.state_dir / "hosts" / name

    def _netns(self, name: str) -> str:
        return f"{self.name}-{name}"

    def _veth(self, name: str) -> str:
        return f"{self.name}{HOST_OFFSET + self._index(name)}"

    def _inner_veth(self, name: str) -> str:
        """A bastion's second veth, on the inner bridge."""
        return f"{self.name}9{self._index(name):03d}"

    def cgroup(self, name: str) -> str:
        """The cgroup (a top-level one in every hierarchy) of host ``name``'s containers."""
        return f"{self.name}-{name}"

    def services(self, name: str) -> tuple[str, ...]:
        """Services the host runs: sshd plus those of its roles."""
        result = ["sshd"]
        for role in self.spec(name).roles:
            result += ROLE_SERVICES[role]
        return tuple(result)

    # -- public operations ---------------------------------------------------

    def up(self) -> list[LabHostStatus]:
        """Build every host that is not already running; idempotent."""
        self._preflight()
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o755)
        (self.state_dir / LAB_FILE).write_text(json.dumps(
            {"name": self.name, "networks": [str(n) for n in self.networks()]}))
        self._remove_strangers()
        self._ensure_client_key()
        self._ensure_postgres_password()
        self._ensure_bridge()
        base = ensure_base_image() if any("docker" in s.roles for s in self.specs) else None
        errors: list[str] = []
        lock = threading.Lock()

        def build(spec: LabHostSpec) -> None:
            try:
                self._ensure_host(spec)
                if base is not None and "docker" in spec.roles:
                    self._import_base_image(spec.name, base)
            except (LabError, OSError, subprocess.SubprocessError) as exc:
                with lock:
                    errors.append(f"{spec.name}: {exc}" if not isinstance(exc, LabError)
                                  else str(exc))

        self.each_host(build)
        if errors:
            raise LabError("lab host failed to start:\n" + "\n".join(errors))
        self._write_client_files()
        return self.status()

    def down(self) -> None:
        """Remove every lab namespace, process, link and file, even of a crashed lab."""
        namespaces = self._lab_namespaces()
        self._kill_namespaces(namespaces)
        self._remove_cgroups(f"{self.name}-*")
        for netns in namespaces:
            _run(["ip", "netns", "delete", netns], check=False)
        for link in self._lab_links():
            _run(["ip", "link", "delete", link], check=False)
        if not _run(["ip", "-o", "-4", "addr", "show", "to", LAB_RANGE], check=False).stdout:
            # the last lab is gone: only then the lab's own route (never another's metric)
            _run(["ip", "route", "delete", "unreachable", LAB_RANGE,
                  "metric", LAB_ROUTE_METRIC], check=False)
        if self.inventory_path is not None:
            self.inventory_path.unlink(missing_ok=True)
        if self.state_dir.exists():
            shutil.rmtree(self.state_dir)
        with contextlib.suppress(OSError):
            self.state_dir.parent.rmdir()  # only when no other lab lives there

    def status(self) -> list[LabHostStatus]:
        """Per host: address, roles, whether it is up, and each service's state."""
        namespaces = set(self._lab_namespaces())

        def one(spec: LabHostSpec) -> LabHostStatus:
            up = self._netns(spec.name) in namespaces and self._anchor_pid(spec.name) is not None
            services = {s: "absent" for s in self.services(spec.name)}
            if up:
                out = self.host_script(spec.name, "status", *self.services(spec.name)).stdout
                for line in out.splitlines():
                    service, _, state = line.partition(" ")
                    services[service] = state
            return LabHostStatus(spec.name, self.address(spec.name), spec.roles, up, services)

        return self.each_host(one)

    def each_host(self, work: Callable[[LabHostSpec], T]) -> list[T]:
        """``work`` on every host in parallel (a bounded pool), results in fleet order."""
        with ThreadPoolExecutor(max_workers=max(1, min(RESET_WORKERS, len(self.specs)))) as pool:
            return list(pool.map(work, self.specs))

    def is_up(self) -> bool:
        """True when every host is up and all its services run."""
        return all(h.up and all(v == "running" for v in h.services.values())
                   for h in self.status())

    def nsenter(self, name: str, argv: Sequence[str], *, check: bool = True,
                timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside host ``name``'s namespaces, as the machine's root.

        For fault injection and service control from tests; deploykit itself
        only ever reaches hosts over SSH.
        """
        pid = self._anchor_pid(name)
        if pid is None:
            raise LabError(f"lab host {name} is not running")
        return _run(["nsenter", "-t", str(pid), "-m", "-u", "-i", "-n", "--", *argv],
                    check=check, timeout=timeout)

    def host_script(self, name: str, action: str, *services: str,
                    check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run the lab's service control script on a host (``start``/``stop``/``status``)."""
        return self.nsenter(name, ["sh", "-c", self._host_script, "labhost", action, *services],
                            check=check)

    def reset(self) -> None:
        """Return every host to its freshly built state between tests, without a rebuild:
        empty /srv, /var/backups, /tmp and /var/lib/deploykit; on web hosts no supervisor
        program and nginx's own default site only; every service running again."""
        def reset_one(spec: LabHostSpec) -> None:
            self.host_script(spec.name, "start", *self.services(spec.name))
            script = RESET_SCRIPT + (RESET_WEB_SCRIPT if "web" in spec.roles else "") \
                + (RESET_DOCKER_SCRIPT if "docker" in spec.roles else "")
            self.nsenter(spec.name, ["sh", "-c", script])

        self.each_host(reset_one)

    def start_service(self, name: str, service: str) -> None:
        """Start one service on a lab host (no-op when it runs)."""
        self.host_script(name, "start", service)

    def stop_service(self, name: str, service: str) -> None:
        """Stop one service on a lab host and wait until it is gone."""
        self.host_script(name, "stop", service)

    # -- checks ---------------------------------------------------------------

    def _preflight(self) -> None:
        if os.geteuid() != 0:
            raise LabError("the lab needs root (it creates network namespaces); "
                           "run as root, e.g. sudo invoke lab.up")
        roles = {r for s in self.specs for r in s.roles}
        wanted = {"ip", "unshare", "nsenter", "runuser", "sudo", "/usr/sbin/sshd", "ssh-keygen"}
        for role in roles:
            for program, package in REQUIRED_PROGRAMS.items():
                if package in ROLE_PACKAGES[role]:
                    wanted.add(program)
        missing = sorted({REQUIRED_PROGRAMS[p] for p in wanted
                          if shutil.which(p) is None and not os.access(p, os.X_OK)})
        if missing:
            raise LabError(f"programs the lab needs are missing; install them with: "
                           f"apt-get install {' '.join(missing)}")
        for other, networks in live_labs().items():
            clash = [(mine, theirs) for mine in self.networks() for theirs in networks
                     if mine.overlaps(theirs)]
            if other != self.name and clash:
                mine, network = clash[0]
                raise LabError(f"the lab's network {mine} overlaps {network} of the "
                               f"running lab {other!r}; choose another block of {LAB_RANGE} "
                               f"(DEPLOYKIT_LAB_NETWORK) or take that lab down first "
                               f"(DEPLOYKIT_LAB_NAME={other} invoke lab.down)")
        out = _run(["ip", "-o", "-4", "addr", "show"]).stdout
        for line in out.splitlines():
            parts = line.split()
            if len(parts) < 4 or parts[1] == self.bridge:
                continue
            iface = ipaddress.ip_interface(parts[3])
            if iface.network.overlaps(self.network):
                raise LabError(f"the lab's address range {self.network} is already in use on "
                               f"interface {parts[1]} ({parts[3]}); remove it or stop what uses it")

    # -- building -------------------------------------------------------------

    def _remove_strangers(self) -> None:
        """Tear down lab namespaces that are not part of this fleet (or broken)."""
        wanted = {self._netns(s.name) for s in self.specs}
        for netns in self._lab_namespaces():
            name = netns[len(self.name) + 1:]
            broken = netns in wanted and self._anchor_pid(name) is None
            if netns not in wanted or broken:
                self._kill_namespaces([netns])
                self._remove_cgroups(self.cgroup(name))
                _run(["ip", "netns", "delete", netns], check=False)
                if netns not in wanted:
                    shutil.rmtree(self._host_dir(name), ignore_errors=True)
        # veths whose namespace disappeared are deleted with it; a stale one blocks reuse
        owners = {self._veth(s.name): s.name for s in self.specs}
        owners.update({self._inner_veth(s.name): s.name for s in self.specs
                       if "bastion" in s.roles})
        bridges = {self.bridge} | ({self.inner_bridge} if self.inner_network else set())
        live = set(self._lab_namespaces())
        for link in self._lab_links():
            if link not in owners and link not in bridges:
                _run(["ip", "link", "delete", link], check=False)
            elif link in owners:
                owner = owners[link]
                if self._netns(owner) not in live:
                    _run(["ip", "link", "delete", link], check=False)

    def _ensure_client_key(self) -> None:
        if not self.identity_file.exists():
            _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "deploykit-lab",
                  "-f", str(self.identity_file)])

    def _ensure_postgres_password(self) -> None:
        if not self.postgres_password_file.exists():
            fd = os.open(self.postgres_password_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(os.urandom(18).hex())

    def _ensure_bridge(self) -> None:
        if _run(["ip", "link", "show", self.bridge], check=False).returncode != 0:
            _run(["ip", "link", "add", self.bridge, "type", "bridge"])
            _run(["ip", "addr", "add", f"{self.gateway}/{self.network.prefixlen}",
                  "dev", self.bridge])
        _run(["ip", "link", "set", self.bridge, "up"])
        if self.inner_network is not None:  # no address here: no route from the machine
            if _run(["ip", "link", "show", self.inner_bridge], check=False).returncode != 0:
                _run(["ip", "link", "add", self.inner_bridge, "type", "bridge"])
            _run(["ip", "link", "set", self.inner_bridge, "up"])
        # No packet for the lab range may leave this machine: addresses of no lab
        # fail at once instead of going out by the default route.
        _run(["ip", "route", "replace", "unreachable", LAB_RANGE, "metric", LAB_ROUTE_METRIC])

    def _ensure_host(self, spec: LabHostSpec) -> None:
        netns = self._netns(spec.name)
        if netns not in self._lab_namespaces():
            self._provision_files(spec)
            self._create_network(spec)
        if self._anchor_pid(spec.name) is None:
            self._start_anchor(spec)
        proc = self.host_script(spec.name, "start", *self.services(spec.name), check=False)
        if proc.returncode != 0:
            log = self._host_dir(spec.name) / "fs/var/log"
            raise LabError(f"{spec.name}: services did not start: {proc.stderr.strip()}\n"
                           f"--- {log}/labhost.log ---\n{_tail(log / 'labhost.log')}\n"
                           f"--- {log}/sshd.log ---\n{_tail(log / 'sshd.log')}")
        self._wait_for_ssh(spec.name)

    def _create_network(self, spec: LabHostSpec) -> None:
        netns, veth = self._netns(spec.name), self._veth(spec.name)
        _run(["ip", "netns", "add", netns])
        _run(["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", netns])
        bridge, network = self.bridge, self.network
        if spec.inner:
            assert self.inner_network is not None
            bridge, network = self.inner_bridge, self.inner_network
        _run(["ip", "link", "set", veth, "master", bridge, "up"])
        _run(["ip", "-n", netns, "addr", "add",
              f"{self.address(spec.name)}/{network.prefixlen}", "dev", "eth0"])
        _run(["ip", "-n", netns, "link", "set", "eth0", "up"])
        if "bastion" in spec.roles and self.inner_network is not None:
            inner = self._inner_veth(spec.name)
            _run(["ip", "link", "add", inner, "type", "veth", "peer", "name", "eth1",
                  "netns", netns])
            _run(["ip", "link", "set", inner, "master", self.inner_bridge, "up"])
            _run(["ip", "-n", netns, "addr", "add",
                  f"{self.inner_address(spec.name)}/{self.inner_network.prefixlen}",
                  "dev", "eth1"])
            _run(["ip", "-n", netns, "link", "set", "eth1", "up"])
        _run(["ip", "-n", netns, "link", "set", "lo", "up"])

    def _provision_files(self, spec: LabHostSpec) -> None:
        """Write the host's private directories (fresh each time its namespace is created)."""
        root = self._host_dir(spec.name)
        shutil.rmtree(root, ignore_errors=True)
        fs = root / "fs"
        for d in PRIVATE_DIRS:
            (fs / d).mkdir(parents=True, exist_ok=True)
        (fs / "var/lib/dpkg").mkdir()  # the machine's package database, bound read-only
        for d in ("var/log/nginx", "var/log/postgresql", "var/log/redis",
                  "var/log/supervisor", "etc/supervisor/conf.d", "var/lib/nginx",
                  "var/lib/redis"):
            (fs / d).mkdir(parents=True, exist_ok=True)
        os.chmod(fs / "root", 0o700)
        (fs / "root/.bashrc").write_text(labconfig.ROOT_BASHRC)
        (fs / "root/.profile").write_text(labconfig.ROOT_PROFILE)
        self._provision_deploy_user(fs, root / ETC_UPPER)
        (root / ETC_WORK).mkdir()
        (root / "hosts").write_text(labconfig.etc_hosts(spec.name, self.addresses()))

        ssh = fs / "etc/ssh"
        (ssh / "sshd_config").write_text(labconfig.SSHD_CONFIG)
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", spec.name,
              "-f", str(ssh / "ssh_host_ed25519_key")])
        keys = ssh / "authorized_keys.d"  # AuthorizedKeysFile /etc/ssh/authorized_keys.d/%u
        keys.mkdir(mode=0o755)
        client_key = Path(f"{self.identity_file}.pub").read_text()
        for user in ("root", DEPLOY_USER):
            authorized = keys / user
            authorized.write_text(client_key)
            os.chmod(authorized, 0o600)
            shutil.chown(authorized, *_user_ids(root / ETC_UPPER, user))

        if "web" in spec.roles:
            nginx = fs / "etc/nginx"
            shutil.rmtree(nginx)
            shutil.copytree("/etc/nginx", nginx, symlinks=True)
            (nginx / "nginx.conf").write_text(labconfig.NGINX_CONF)
            for site in (nginx / "sites-enabled").iterdir():
                site.unlink()
            (nginx / "sites-enabled/default").write_text(labconfig.NGINX_DEFAULT_SITE)
            (fs / "etc/supervisor/supervisord.conf").write_text(labconfig.SUPERVISORD_CONF)
        if "db" in spec.roles:
            (fs / "etc/redis/redis.conf").write_text(labconfig.REDIS_CONF)
            for d in ("var/lib/redis", "var/log/redis"):
                shutil.chown(fs / d, "redis", "redis")
            shutil.chown(fs / "var/log/postgresql", "postgres", "postgres")
            self._init_postgres(fs)
        if "docker" in spec.roles:
            (fs / "var/lib/docker").mkdir(parents=True, exist_ok=True)
            (fs / "var/lib/dockerd").mkdir(parents=True, exist_ok=True)
            (fs / "var/lib/dockerd/daemon.json").write_text(
                labconfig.dockerd_config(f"/{self.cgroup(spec.name)}"))

    @staticmethod
    def _provision_deploy_user(fs: Path, etc: Path) -> None:
        """The host's passwd, group and shadow in its /etc overlay ``etc`` (no password
        for anyone: key login only) with the deploy user, its home, and its sudo rule."""
        users = Path("/etc/passwd").read_text().splitlines()
        groups = Path("/etc/group").read_text().splitlines()
        taken = {int(line.split(":")[2]) for line in users + groups if line.count(":") >= 3}
        uid = next(i for i in range(2000, 60000) if i not in taken)
        users = [u for u in users if not u.startswith(f"{DEPLOY_USER}:")]
        groups = [g for g in groups if not g.startswith(f"{DEPLOY_USER}:")]
        users.append(f"{DEPLOY_USER}:x:{uid}:{uid}:deploykit lab:/home/{DEPLOY_USER}:/bin/bash")
        groups.append(f"{DEPLOY_USER}:x:{uid}:")
        (etc / "sudoers.d").mkdir(parents=True)
        (etc / "passwd").write_text("\n".join(users) + "\n")
        (etc / "group").write_text("\n".join(groups) + "\n")
        shadow = etc / "shadow"
        shadow.write_text("".join(f"{u.split(':')[0]}:*:19000:0:99999:7:::\n" for u in users))
        os.chmod(shadow, 0o640)
        with contextlib.suppress(KeyError, LookupError):
            shutil.chown(shadow, "root", "shadow")
        sudoers = etc / "sudoers.d" / DEPLOY_USER
        sudoers.write_text(labconfig.deploy_sudoers(DEPLOY_USER))
        os.chmod(sudoers, 0o440)
        home = fs / "home" / DEPLOY_USER
        home.mkdir(parents=True, mode=0o750)
        (home / ".bashrc").write_text(labconfig.ROOT_BASHRC)
        (home / ".profile").write_text(labconfig.ROOT_PROFILE)
        for path in (home, home / ".bashrc", home / ".profile"):
            os.chown(path, uid, uid)

    def _init_postgres(self, fs: Path) -> None:
        data = fs / PG_DATA
        data.parent.mkdir(parents=True)
        for d in (fs / "var/lib/postgresql", data.parent):
            shutil.chown(d, "postgres", "postgres")
        pwfile = data.parent / ".pwfile"
        pwfile.write_text(self.postgres_password_file.read_text())
        shutil.chown(pwfile, "postgres", "postgres")
        os.chmod(pwfile, 0o600)
        try:
            _run(["runuser", "-u", "postgres", "--", "/usr/lib/postgresql/15/bin/initdb",
                  "-D", str(data), "-U", "postgres", "--no-sync", "--no-locale", "-E", "UTF8",
                  "--auth-local=peer", "--auth-host=scram-sha-256", f"--pwfile={pwfile}"],
                 timeout=120)
        finally:
            pwfile.unlink(missing_ok=True)
        with open(data / "postgresql.conf", "a") as f:
            f.write(labconfig.POSTGRESQL_CONF_EXTRA)
        with open(data / "pg_hba.conf", "a") as f:
            f.write(labconfig.PG_HBA_EXTRA)

    def _mount_script(self, spec: LabHostSpec) -> str:
        """Shell run inside the fresh mount/UTS namespace: private dirs, then the anchor."""
        root = self._host_dir(spec.name)
        fs = root / "fs"
        lines = [
            "set -e",
            f"hostname {spec.name}",
            f"mount --bind /var/lib/dpkg {fs}/var/lib/dpkg",
            f"mount -o remount,bind,ro {fs}/var/lib/dpkg",
            f"mount -t overlay overlay -o lowerdir=/etc,upperdir={root}/{ETC_UPPER},"
            f"workdir={root}/{ETC_WORK} /etc",
        ]
        for d in PRIVATE_DIRS:
            lines.append(f"mount --rbind {fs}/{d} /{d}")
        if "docker" in spec.roles:
            lines += _cgroup_mount_lines()
        lines += [
            f"mount --bind {root}/hosts /etc/hosts",
            "mount -t tmpfs -o mode=1777,size=256m tmpfs /tmp",
            "mount -t tmpfs -o mode=1777,size=64m tmpfs /dev/shm",
            "mount -t tmpfs -o mode=755,size=64m tmpfs /run",
            f"touch {root}/ready",
            "exec sleep infinity",
        ]
        return "\n".join(lines)

    def _start_anchor(self, spec: LabHostSpec) -> None:
        root = self._host_dir(spec.name)
        (root / "ready").unlink(missing_ok=True)
        log = open(root / "anchor.log", "ab")
        try:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", self._netns(spec.name),
                 "unshare", "--mount", "--uts", "--ipc", "--propagation", "private",
                 "sh", "-c", self._mount_script(spec)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
            )
        finally:
            log.close()
        deadline = time.monotonic() + START_TIMEOUT
        while not (root / "ready").exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise LabError(f"{spec.name}: namespace setup failed:\n"
                               f"{_tail(root / 'anchor.log')}")
            time.sleep(0.01)
        (root / "anchor.pid").write_text(str(proc.pid))

    def _import_base_image(self, name: str, tarball: Path) -> None:
        """``docker import`` the cached base image into host ``name``'s dockerd, once."""
        if self.nsenter(name, ["docker", "image", "inspect", BASE_IMAGE],
                        check=False).returncode == 0:
            return
        pid = self._anchor_pid(name)
        with open(tarball, "rb") as f:
            proc = subprocess.run(
                ["nsenter", "-t", str(pid), "-m", "-u", "-i", "-n", "--",
                 "docker", "import", "-", BASE_IMAGE],
                stdin=f, capture_output=True, timeout=300, check=False)
        if proc.returncode != 0:
            raise LabError(f"{name}: docker import of {tarball} failed: "
                           f"{proc.stderr.decode(errors='replace').strip()}")

    @staticmethod
    def _remove_cgroups(pattern: str) -> None:
        """Kill every process in the cgroups named ``pattern`` (a glob: the docker hosts'
        containers, which may sit in network namespaces of their own) and remove them."""
        groups = [g for g in Path(CGROUP_ROOT).glob(f"*/{pattern}") if g.is_dir()]
        if not groups:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            targets = {pid for g in groups for pid in _cgroup_pids(g)}
            for pid in targets:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline and any(_pid_alive(p) for p in targets):
                time.sleep(0.02)
        for group in groups:
            for d in sorted((p for p in group.rglob("*") if p.is_dir()),
                            key=lambda p: len(p.parts), reverse=True):
                with contextlib.suppress(OSError):
                    d.rmdir()
            with contextlib.suppress(OSError):
                group.rmdir()

    def _wait_for_ssh(self, name: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        address = self.address(name)
        inner = self.spec(name).inner  # not reachable from here: ask from inside the host
        probe = ["timeout", "2", "bash", "-c", f"exec 3<>/dev/tcp/{address}/22 && head -c 4 <&3"]
        while True:
            if inner:
                if self.nsenter(name, probe, check=False).stdout.startswith("SSH-"):
                    return
            else:
                try:
                    with socket.create_connection((address, 22), timeout=1) as sock:
                        if sock.recv(4).startswith(b"SSH-"):
                            return
                except OSError:
                    pass
            if time.monotonic() > deadline:
                log = self._host_dir(name) / "fs/var/log/sshd.log"
                raise LabError(f"{name}: sshd does not answer on {address}:22\n"
                               f"--- {log} ---\n{_tail(log)}")
            time.sleep(0.05)

    def _write_client_files(self) -> None:
        keys = []
        for spec in self.specs:
            pub = self._host_dir(spec.name) / "fs/etc/ssh/ssh_host_ed25519_key.pub"
            kind, key = pub.read_text().split()[:2]
            keys.append(f"{self.address(spec.name)} {kind} {key}\n")
        self.known_hosts.write_text("".join(keys))
        self.ssh_config.write_text(labconfig.ssh_client_config(
            self.addresses(), str(self.identity_file), str(self.known_hosts),
            jumps=self.jumps()))
        (self.state_dir / "fleet.json").write_text(json.dumps(
            [{"name": s.name, "roles": list(s.roles), **({"inner": True} if s.inner else {})}
             for s in self.specs]))
        if self.inventory_path is not None:
            self.inventory_path.parent.mkdir(parents=True, exist_ok=True)
            self.inventory_path.write_text(
                "# Written by `invoke lab.up`; removed by `invoke lab.down`.\n"
                + yaml.safe_dump(self.inventory(self.inventory_user), sort_keys=False))

    def jumps(self) -> dict[str, str]:
        """Inner host name -> the bastion it is reached through."""
        bastion = self.bastion()
        if bastion is None:
            return {}
        return {s.name: bastion for s in self.specs if s.inner}

    @classmethod
    def from_inventory(cls, path: Path | str) -> Lab:
        """The lab an inventory written by ``lab.up`` describes (its name and network)."""
        try:
            data = yaml.safe_load(Path(path).read_text())
            lab_vars = data["all"]["vars"]
            name, network = str(lab_vars["lab_name"]), str(lab_vars["lab_network"])
        except OSError as exc:
            raise LabError(f"cannot read lab inventory {path}: {exc.strerror}") from None
        except (yaml.YAMLError, KeyError, TypeError):
            raise LabError(f"{path} is not a lab inventory (no all.vars lab_name and "
                           "lab_network: it was not written by invoke lab.up)") from None
        fleet = load_fleet(name) or default_fleet()
        user = str(lab_vars.get("user", "root"))
        inner = lab_vars.get("lab_inner_network")
        return cls(fleet, name=name, network=network, inventory_path=path,
                   inventory_user=user if user == DEPLOY_USER else "root",
                   inner_network=str(inner) if inner else None)

    def inventory(self, user: str = "root") -> dict[str, object]:
        """The fleet as an Ansible-style inventory mapping (what lab.yml holds); with
        ``user="deploy"`` it logs in as the non-root deploy user with ``become`` (sudo)."""
        versions = _package_versions([p for r in ROLE_PACKAGES.values() for p in r])
        jumps = self.jumps()
        groups: dict[str, dict[str, object]] = {}
        for spec in self.specs:
            host_vars: dict[str, object] = {"address": self.address(spec.name),
                                            "roles": list(spec.roles)}
            for role in spec.roles:
                for package in ROLE_PACKAGES[role]:
                    var = VERSION_VARS.get(package, f"{package.split('-')[0]}_version")
                    host_vars[var] = versions.get(package, "")
            if spec.name in jumps:  # reached only through the bastion (ProxyJump)
                host_vars["jump"] = jumps[spec.name]
            if "db" in spec.roles:
                host_vars.update(postgres_port=5432, postgres_user="postgres",
                                 postgres_password_file=str(self.postgres_password_file),
                                 redis_port=6379)
            for group in spec.roles or ("ungrouped",):
                groups.setdefault(group, {"hosts": {}})["hosts"][spec.name] = dict(host_vars)  # type: ignore[index]
        return {"all": {
            "vars": {"user": user, **({"become": True} if user != "root" else {}),
                     "identity_file": str(self.identity_file),
                     "known_hosts": str(self.known_hosts), "lab": True,
                     "lab_name": self.name, "lab_network": str(self.network),
                     **({"lab_inner_network": str(self.inner_network)}
                        if self.inner_network else {})},
            "children": groups,
        }}

    # -- finding and removing -------------------------------------------------

    def _anchor_pid(self, name: str) -> int | None:
        try:
            pid = int((self._host_dir(name) / "anchor.pid").read_text())
        except (OSError, ValueError):
            return None
        return pid if _pid_alive(pid) else None

    def _lab_namespaces(self) -> list[str]:
        """This lab's network namespaces, found in the kernel (not in our state files)."""
        out = _run(["ip", "netns", "list"], check=False).stdout
        return [line.split()[0] for line in out.splitlines()
                if line.startswith(f"{self.name}-")]

    def _lab_links(self) -> list[str]:
        """This lab's bridge and root-side veths, found in the kernel."""
        out = _run(["ip", "-o", "link", "show"], check=False).stdout
        pattern = re.compile(rf"{self.name}\d+")
        links = []
        for line in out.splitlines():
            name = line.split(":")[1].strip().split("@")[0]
            if pattern.fullmatch(name):
                links.append(name)
        return links

    @staticmethod
    def _kill_namespaces(namespaces: Sequence[str]) -> None:
        """Stop every process in the given namespaces by PID: TERM, then KILL after 2 s."""
        def pids() -> list[int]:
            found: list[int] = []
            for netns in namespaces:
                out = _run(["ip", "netns", "pids", netns], check=False).stdout
                found += [int(p) for p in out.split()]
            return found

        for sig in (signal.SIGTERM, signal.SIGKILL):
            targets = pids()
            if not targets:
                return
            for pid in targets:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline and any(_pid_alive(p) for p in targets):
                time.sleep(0.02)


LAB_FILE = "lab.json"
"""In a lab's state directory: its name and network (what other labs check against)."""


def live_labs(root: Path | None = None) -> dict[str, list[ipaddress.IPv4Network]]:
    """Every lab on this machine whose bridge exists, with its networks."""
    root = root or STATE_ROOT
    links = _run(["ip", "-o", "link", "show", "type", "bridge"], check=False).stdout
    bridges = {line.split(":")[1].strip() for line in links.splitlines() if ":" in line}
    found: dict[str, list[ipaddress.IPv4Network]] = {}
    for path in sorted(root.glob(f"*/{LAB_FILE}")):
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            data = json.loads(path.read_text())
            if f"{data['name']}0" in bridges:
                found[str(data["name"])] = [ipaddress.IPv4Network(n) for n in data["networks"]]
    return found


def _user_ids(etc: Path, user: str) -> tuple[int, int]:
    """uid and gid of ``user`` in a host's passwd (in ``etc``, its /etc overlay)."""
    for line in (etc / "passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == user:
            return int(fields[2]), int(fields[3])
    raise LabError(f"no user {user!r} in {etc}/passwd")


def _package_versions(packages: Iterable[str]) -> dict[str, str]:
    """Installed Debian package versions, by package name (one dpkg-query call)."""
    proc = _run(["dpkg-query", "-W", "-f", "${Package} ${Version}\n", *packages], check=False)
    return dict(line.split(" ", 1) for line in proc.stdout.splitlines() if " " in line)


def load_fleet(name: str | None = None) -> list[LabHostSpec] | None:
    """The fleet of the running lab ``name`` (default: DEPLOYKIT_LAB_NAME's), or None."""
    try:
        data = json.loads((STATE_ROOT / (name or DEFAULT_NAME) / "fleet.json").read_text())
    except (OSError, ValueError):
        return None
    return [LabHostSpec(h["name"], tuple(h["roles"]), bool(h.get("inner"))) for h in data]


CGROUP_ROOT = "/sys/fs/cgroup"


def _cgroup_pids(group: Path) -> set[int]:
    """Every PID in a cgroup and its descendants."""
    pids: set[int] = set()
    for procs in group.rglob("cgroup.procs"):
        with contextlib.suppress(OSError, ValueError):
            pids.update(int(p) for p in procs.read_text().split())
    return pids


def _cgroup_mount_lines() -> list[str]:
    """Shell lines that mount the machine's cgroup hierarchies in a host's mount namespace
    (``ip netns exec`` gives it a fresh /sys without them; dockerd needs them)."""
    lines = ["mount -t tmpfs -o mode=755,size=1m cgroup /sys/fs/cgroup"]
    with open("/proc/self/mounts") as f:
        mounts = [line.split() for line in f]
    for _, target, fstype, options, *_ in mounts:
        if fstype not in ("cgroup", "cgroup2") or not target.startswith(CGROUP_ROOT + "/"):
            continue
        keep = ",".join(o for o in options.split(",")
                        if o not in ("rw", "ro", "relatime", "nosuid", "nodev", "noexec"))
        opts = f" -o {shlex.quote(keep)}" if keep else ""
        lines += [f"mkdir -p {shlex.quote(target)}",
                  f"mount -t {fstype}{opts} {fstype} {shlex.quote(target)}"]
    if len(lines) == 1:  # a pure cgroup v2 machine: /sys/fs/cgroup itself
        lines = [f"mount -t cgroup2 cgroup2 {CGROUP_ROOT}"]
    return lines


def debian_mirror(sources: Path = Path("/etc/apt")) -> str:
    """The machine's configured Debian mirror (deb822 ``.sources`` or ``sources.list``)."""
    candidates = sorted((sources / "sources.list.d").glob("*.sources"))
    for path in candidates:
        for block in path.read_text().split("\n\n"):
            fields = dict(line.split(":", 1) for line in block.splitlines()
                          if ":" in line and not line.startswith("#"))
            suites = fields.get("Suites", "").split()
            if any(s.strip() == BASE_SUITE for s in suites) and "URIs" in fields:
                return fields["URIs"].split()[0]
    for path in [sources / "sources.list", *sorted((sources / "sources.list.d").glob("*.list"))]:
        with contextlib.suppress(OSError):
            for line in path.read_text().splitlines():
                parts = line.split()
                if len(parts) >= 3 and parts[0] == "deb" and BASE_SUITE in parts[2:]:
                    return next(p for p in parts[1:] if not p.startswith("["))
    raise LabError(f"no Debian {BASE_SUITE} mirror in {sources}/sources.list(.d); the lab "
                   "builds its container base image from the machine's configured mirror")


def ensure_base_image(cache: Path | None = None) -> Path:
    """The base image tarball, built once with debootstrap and cached (kept by lab.down).

    A file lock serialises labs that start together; a partial build never
    replaces the cache.
    """
    cache = cache or STATE_ROOT / BASE_IMAGE_DIR
    tarball = cache / f"{BASE_SUITE}-minbase-python3.tar"
    if tarball.exists():
        return tarball
    if shutil.which("debootstrap") is None:
        raise LabError("debootstrap is missing (the lab builds its container base image with "
                       "it); install it with: apt-get install debootstrap")
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if tarball.exists():
            return tarball
        root = cache / "rootfs.partial"
        shutil.rmtree(root, ignore_errors=True)
        try:
            _run(["debootstrap", "--variant=minbase", "--include=python3", BASE_SUITE,
                  str(root), debian_mirror()], timeout=BUILD_TIMEOUT)
            for d in ("usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale",
                      "var/cache/apt", "var/lib/apt/lists"):
                shutil.rmtree(root / d, ignore_errors=True)
            partial = tarball.with_suffix(".partial")
            _run(["tar", "--numeric-owner", "-C", str(root), "-cf", str(partial), "."],
                 timeout=BUILD_TIMEOUT)
            partial.rename(tarball)
        finally:
            shutil.rmtree(root, ignore_errors=True)
    return tarball
