"""The compose example app (examples/compose) on docker lab hosts: its images, built
once on a host from the lab's cached base image, for the compose tests and benchmarks."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from deploykit.connection import Connection
from deploykit.errors import TaskError
from deploykit.tasks import compose

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "compose"
BUILD_DIR = "/srv/build/app"
VERSIONS: Mapping[str, Mapping[str, str]] = {"v1": {}, "v2": {}, "v3-broken": {"BROKEN": "1"}}
"""Each version's build args beyond ``APP_VERSION`` (v3-broken fails its healthcheck)."""


def build_images(conn: Connection, versions: Mapping[str, Mapping[str, str]] = VERSIONS
                 ) -> dict[str, str]:
    """Build ``dkapp:<version>`` for each version on ``conn``'s host (a no-op when built
    already); version -> image name. TaskError naming the version when one fails."""
    conn.run(["mkdir", "-p", BUILD_DIR])
    for f in sorted((EXAMPLE / "app").iterdir()):
        conn.put(f.read_bytes(), f"{BUILD_DIR}/{f.name}")
    made = {}
    for version, extra in versions.items():
        image = f"dkapp:{version}"
        result = compose.build(image, BUILD_DIR,
                               build_args={"APP_VERSION": version, **extra}).run(conn)
        if result.failed:
            raise TaskError(f"building {image}: {result.message}", host=conn.name)
        made[version] = image
    return made
