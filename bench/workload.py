"""The benchmark workload: what one host gets, as deploykit tasks.

5 directories, 20 files, 1 template and 1 line_in_file per host; the pyinfra
side (bench/pyinfra_deploy.py) does exactly the same.
"""

from __future__ import annotations

from deploykit.task import Task
from deploykit.tasks import files

ROOT = "/srv/bench"
TEMPLATE = "app={{ app_name }}\nhost={{ inventory_hostname }}\nport={{ app_port }}\n"


def file_content(i: int) -> str:
    """The content of file ``i``: twenty numbered lines."""
    return "".join(f"line {j} of file {i}\n" for j in range(20))


def workload() -> list[Task]:
    """The 27 tasks applied to every host (the template names the host it is on)."""
    tasks: list[Task] = [files.directory(f"{ROOT}/d{d}", mode=0o755, recursive=True)
                         for d in range(5)]
    tasks += [files.file(f"{ROOT}/d{i % 5}/f{i}.txt", file_content(i), mode=0o644)
              for i in range(20)]
    tasks.append(files.template(f"{ROOT}/app.conf", template_string=TEMPLATE,
                                vars={"app_name": "bench", "app_port": 8000}))
    tasks.append(files.line_in_file(f"{ROOT}/settings.ini", "max_conn=100",
                                    regexp=r"^max_conn=", create=True))
    return tasks
