#!/usr/bin/env bash
# Create bench/.venv-pyinfra with pyinfra 3.x for the deploykit-vs-pyinfra benchmark.
# Idempotent: reuses the venv and installs only when the pinned version is missing.
# pyinfra is NOT a dependency of deploykit; it lives only in this separate venv.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv-pyinfra"
# Pinned to what pip resolved for "pyinfra>=3.1,<4" when this was written.
# Override with e.g. PYINFRA_VERSION=3.9.2 bash bench/setup_pyinfra.sh
version="${PYINFRA_VERSION:-3.10.0}"

if [ ! -x "$venv/bin/python" ]; then
    /usr/bin/python3 -m venv "$venv"
fi
installed="$("$venv/bin/python" -c 'from importlib.metadata import version; print(version("pyinfra"))' 2>/dev/null || true)"
if [ "$installed" != "$version" ]; then
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "pyinfra==$version"
fi
"$venv/bin/pyinfra" --version
