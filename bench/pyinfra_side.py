"""The pyinfra side of the deploykit-vs-pyinfra benchmark.

:func:`run_pyinfra` runs ``bench/pyinfra_deploy.py`` with pyinfra 3 (installed in
``bench/.venv-pyinfra`` by ``bench/setup_pyinfra.sh``) against a list of hosts and
returns the wall time of the whole ``pyinfra`` process. SSH is strict: root with
the given key, host keys checked against the given known_hosts file only
(``ssh_strict_host_key_checking="yes"``), no agent, no other keys, no
``~/.ssh/config``.

Standalone::

    .venv/bin/python bench/pyinfra_side.py [N] [--tcp-nodelay]

brings up a lab of N hosts (default 1) named ``dkb`` on 198.18.0.224/27, runs
the deploy once cold (after ``rm -rf /srv/bench`` on every host), checks what it
wrote, runs it 3 more times (which must change nothing), prints the timings and
always tears the lab down. ``--tcp-nodelay`` runs the diagnostic variant (see
``_NODELAY_SITECUSTOMIZE``), not pyinfra as shipped.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from deploykit.testing.lab import Lab

BENCH_DIR = Path(__file__).resolve().parent
PYINFRA = BENCH_DIR / ".venv-pyinfra" / "bin" / "pyinfra"
DEPLOY_FILE = BENCH_DIR / "pyinfra_deploy.py"
LAB_NAME = "dkb"
LAB_NETWORK = "198.18.0.224/27"
NOOP_RUNS = 3
TIMEOUT = 600.0

# Operations per host in pyinfra_deploy.py: 5 dirs + 20 files + 1 template + 1 line.
OPS_PER_HOST = 27

# Opt-in diagnostic, NOT used by default: paramiko (pyinfra's SSH library) leaves
# Nagle's algorithm on, so every remote command waits ~40 ms for a delayed ACK on
# the lab's links. With tcp_nodelay=True this sitecustomize, put on PYTHONPATH of
# the pyinfra process only, hands paramiko a socket with TCP_NODELAY set.
_NODELAY_SITECUSTOMIZE = """\
import socket

import paramiko.client

_connect = paramiko.client.SSHClient.connect


def connect(self, hostname, port=22, *args, **kwargs):
    if kwargs.get("sock") is None:
        sock = socket.create_connection((hostname, port), timeout=kwargs.get("timeout"))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        kwargs["sock"] = sock
    return _connect(self, hostname, port, *args, **kwargs)


paramiko.client.SSHClient.connect = connect
"""


@dataclass
class PyinfraRun:
    """One pyinfra process: wall seconds and pyinfra's own result totals."""

    seconds: float
    changed: int  # host-operations that changed something ("success" in pyinfra's JSON)
    no_change: int
    errors: int
    changed_ops: list[str] = field(default_factory=list)  # "op name: host, host"


def _inventory_source(hosts: list[tuple[str, str]], identity_file: str,
                      known_hosts: str, ssh_config: str) -> str:
    common = {
        "ssh_user": "root",
        "ssh_key": str(identity_file),
        "ssh_known_hosts_file": str(known_hosts),
        "ssh_strict_host_key_checking": "yes",
        # Only the given key: no agent, no ~/.ssh/id_*, no user ssh_config.
        "ssh_allow_agent": False,
        "ssh_look_for_keys": False,
        "ssh_config_file": ssh_config,
    }
    entries = [(name, {"ssh_hostname": address, "ssh_port": 22, **common})
               for name, address in hosts]
    return ("# Written by bench/pyinfra_side.py; a pyinfra inventory.\n"
            f"bench_hosts = {entries!r}\n")


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def run_pyinfra_detailed(hosts: list[tuple[str, str]], identity_file: str,
                         known_hosts: str, *, workdir: Path,
                         tcp_nodelay: bool = False) -> PyinfraRun:
    """Run the deploy on ``hosts`` ((name, address) pairs); RuntimeError on failure.

    ``tcp_nodelay=True`` is a diagnostic variant (see ``_NODELAY_SITECUSTOMIZE``);
    the benchmark proper runs pyinfra as shipped.
    """
    if not hosts:
        raise ValueError("run_pyinfra needs at least one host")
    if not PYINFRA.exists():
        raise RuntimeError(f"{PYINFRA} is missing; run bash bench/setup_pyinfra.sh first")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    ssh_config = workdir / "ssh_config.empty"
    ssh_config.write_text("")
    inventory = workdir / "pyinfra_inventory.py"
    inventory.write_text(_inventory_source(hosts, identity_file, known_hosts, str(ssh_config)))
    argv = [str(PYINFRA), "-y", "--json", "--parallel", str(len(hosts)),
            str(inventory), str(DEPLOY_FILE)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYINFRA_")}
    env["PYINFRA_PROGRESS"] = "off"
    env.pop("PYTHONPATH", None)
    if tcp_nodelay:
        site = workdir / "nodelay-site"
        site.mkdir(exist_ok=True)
        (site / "sitecustomize.py").write_text(_NODELAY_SITECUSTOMIZE)
        env["PYTHONPATH"] = str(site)
    start = time.perf_counter()
    proc = subprocess.run(argv, cwd=workdir, env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=TIMEOUT, check=False)
    seconds = time.perf_counter() - start
    output = f"{proc.stdout}\n{proc.stderr}"
    if proc.returncode != 0:
        raise RuntimeError(f"pyinfra failed (exit {proc.returncode}):\n{_tail(output)}")
    try:
        results = json.loads(proc.stdout)["results"]
        totals = results["totals"]
    except (ValueError, KeyError, TypeError) as exc:
        raise RuntimeError(f"pyinfra printed no JSON results ({exc}):\n{_tail(output)}") from exc
    if totals["error"] or results["failed_hosts"]:
        raise RuntimeError(f"pyinfra reported errors on {results['failed_hosts']}:\n"
                           f"{_tail(output)}")
    expected = OPS_PER_HOST * len(hosts)
    if totals["hosts"] != expected:
        raise RuntimeError(f"pyinfra ran {totals['hosts']} host-operations, "
                           f"expected {expected}:\n{_tail(output)}")
    changed_ops = [f"{op['name']}: {', '.join(op['success'])}"
                   for op in results["operations"] if op["success"]]
    return PyinfraRun(seconds, totals["success"], totals["no_change"], totals["error"],
                      changed_ops)


def run_pyinfra(hosts: list[tuple[str, str]], identity_file: str, known_hosts: str, *,
                workdir: Path, tcp_nodelay: bool = False) -> float:
    """Run the deploy on ``hosts`` and return the pyinfra process's wall seconds."""
    return run_pyinfra_detailed(hosts, identity_file, known_hosts, workdir=workdir,
                                tcp_nodelay=tcp_nodelay).seconds


# -- checking what the deploy wrote (through the lab, not timed) -----------------

def expected_tree(host_name: str) -> dict[str, tuple[str, str | None]]:
    """path -> (octal mode, content or None for a directory) after the deploy."""
    tree: dict[str, tuple[str, str | None]] = {}
    for d in range(5):
        tree[f"/srv/bench/d{d}"] = ("755", None)
    for i in range(20):
        tree[f"/srv/bench/d{i % 5}/f{i}.txt"] = (
            "644", "".join(f"line {j} of file {i}\n" for j in range(20)))
    tree["/srv/bench/app.conf"] = ("644", f"app=bench\nhost={host_name}\nport=8000\n")
    tree["/srv/bench/settings.ini"] = ("644", "max_conn=100\n")
    return tree


def check_host(lab: Lab, host_name: str) -> None:
    """Raise RuntimeError unless host ``host_name`` holds exactly the expected tree."""
    script = ('cd / && find /srv/bench -mindepth 1 -printf "%p %m %y\\n" | sort && '
              'for f in $(find /srv/bench -type f | sort); do echo "== $f"; cat "$f"; done')
    out = lab.nsenter(host_name, ["sh", "-c", script]).stdout
    listing, _, contents = out.partition("== ")
    found: dict[str, tuple[str, str | None]] = {}
    for line in listing.splitlines():
        path, mode, kind = line.split()
        found[path] = (mode, "" if kind == "f" else None)
    for chunk in ("== " + contents).split("== ")[1:]:
        path, _, body = chunk.partition("\n")
        found[path] = (found[path][0], body)
    expected = expected_tree(host_name)
    if found != expected:
        bad = sorted(p for p in set(found) | set(expected) if found.get(p) != expected.get(p))
        raise RuntimeError(f"{host_name}: /srv/bench differs from the workload at {bad[:5]}")


def main(argv: list[str]) -> int:
    sys.path.insert(0, str(BENCH_DIR.parent))
    from deploykit.testing.lab import Lab, default_fleet

    args = [a for a in argv[1:] if a != "--tcp-nodelay"]
    nodelay = "--tcp-nodelay" in argv[1:]
    count = int(args[0]) if args else 1
    lab = Lab(default_fleet(count), name=LAB_NAME, network=LAB_NETWORK)
    try:
        t0 = time.perf_counter()
        lab.up()
        print(f"lab {LAB_NAME}: {count} host(s) up in {time.perf_counter() - t0:.1f}s",
              flush=True)
        hosts = [(s.name, lab.address(s.name)) for s in lab.specs]
        with tempfile.TemporaryDirectory(prefix="pyinfra-bench-") as tmp:
            workdir = Path(tmp)
            for name, _ in hosts:
                lab.nsenter(name, ["rm", "-rf", "/srv/bench"])
            cold = run_pyinfra_detailed(hosts, str(lab.identity_file), str(lab.known_hosts),
                                        workdir=workdir, tcp_nodelay=nodelay)
            if cold.changed != OPS_PER_HOST * count:
                print(f"warning: cold run changed {cold.changed} of "
                      f"{OPS_PER_HOST * count} host-operations", flush=True)
            for name, _ in hosts:
                check_host(lab, name)
            print(f"cold:   {cold.seconds:7.3f}s  changed={cold.changed} "
                  f"no_change={cold.no_change}", flush=True)
            noops = []
            for k in range(NOOP_RUNS):
                run = run_pyinfra_detailed(hosts, str(lab.identity_file), str(lab.known_hosts),
                                           workdir=workdir, tcp_nodelay=nodelay)
                print(f"no-op{k + 1}: {run.seconds:7.3f}s  changed={run.changed} "
                      f"no_change={run.no_change}", flush=True)
                if run.changed:
                    raise RuntimeError("no-op run changed something:\n"
                                       + "\n".join(run.changed_ops))
                noops.append(run.seconds)
            for name, _ in hosts:
                check_host(lab, name)
        version = subprocess.run([str(PYINFRA), "--version"], capture_output=True,
                                 text=True, check=False).stdout.strip()
        variant = " (diagnostic: TCP_NODELAY patched in)" if nodelay else ""
        print(f"{version}{variant} hosts={count} cold={cold.seconds:.3f}s "
              f"noop={' '.join(f'{s:.3f}' for s in noops)}s "
              f"(min {min(noops):.3f}s, mean {sum(noops) / len(noops):.3f}s)")
        return 0
    finally:
        lab.down()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
