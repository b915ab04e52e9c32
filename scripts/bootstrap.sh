#!/usr/bin/env bash
# Set up everything deploykit needs on a Debian 12 machine (as root), then run
# the demo or the test suite.  Idempotent: a second run installs nothing new.
#
#   bash scripts/bootstrap.sh demo    # install, then bring the lab up, run the demo, tear it down
#   bash scripts/bootstrap.sh test    # install, then run the whole test suite
#   bash scripts/bootstrap.sh setup   # install only
set -euo pipefail

cd "$(dirname "$0")/.."
action="${1:-setup}"
shift || true

APT_PACKAGES=(
  python3 python3-venv git ca-certificates
  iproute2 procps psmisc util-linux
  openssh-server openssh-client sudo
  nginx postgresql-15 postgresql-client-15 redis-server redis-tools supervisor
  sqlite3
  docker.io docker-compose debootstrap
)

if [ "$(id -u)" -ne 0 ]; then
  echo "bootstrap: run as root (the lab creates network namespaces)" >&2
  exit 1
fi

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$pkg")
  fi
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "bootstrap: installing apt packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # Packages must not start their services on the machine itself: the lab starts
  # its own copies inside each host.  policy-rc.d is removed again afterwards.
  policy=/usr/sbin/policy-rc.d
  created_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && created_policy=1
  fi
  trap '[ "$created_policy" = 1 ] && rm -f "$policy"' EXIT
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

venv=.venv
stamp="$venv/.deploykit-installed"
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ ! -x "$venv/bin/python" ]; then
  echo "bootstrap: creating $venv"
  /usr/bin/python3 -m venv "$venv"
fi
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "bootstrap: installing deploykit[dev] into $venv"
  "$venv/bin/pip" install -q --upgrade pip
  "$venv/bin/pip" install -q -e '.[dev]'
  echo "$want" >"$stamp"
fi

# Wheels for Python code that runs on lab hosts (the sample app, alembic):
# hosts have no route to package indexes, so releases carry a wheelhouse made
# here. Downloaded once per change of the requirement files; tests never fetch.
wheelhouse=.cache/wheelhouse
# Every example's requirements (examples/*/requirements.txt) and the test fixtures'.
host_reqs=(examples/*/requirements.txt tests/fixtures/alembic/requirements.txt)
want_wheels="$(cat "${host_reqs[@]}" 2>/dev/null | sha256sum | cut -d' ' -f1)"
if [ ! -f "$wheelhouse/.stamp" ] || [ "$(cat "$wheelhouse/.stamp")" != "$want_wheels" ]; then
  echo "bootstrap: downloading host wheels into $wheelhouse"
  mkdir -p "$wheelhouse"
  for req in "${host_reqs[@]}"; do
    [ -f "$req" ] && "$venv/bin/pip" download -q --only-binary=:all: -d "$wheelhouse" -r "$req"
  done
  echo "$want_wheels" >"$wheelhouse/.stamp"
fi

case "$action" in
  setup) ;;
  demo) exec "$venv/bin/invoke" demo "$@" ;;
  test) exec "$venv/bin/invoke" test "$@" ;;
  *) echo "bootstrap: unknown action '$action' (setup, demo or test)" >&2; exit 2 ;;
esac
