"""pyinfra 3 deploy file for the deploykit-vs-pyinfra benchmark.

Run by ``bench/pyinfra_side.py`` as ``pyinfra -y INVENTORY bench/pyinfra_deploy.py``.
The workload per host is the same as the deploykit side's:

* 5 directories ``/srv/bench/d0`` .. ``/srv/bench/d4``, mode 0755;
* 20 files ``/srv/bench/d{i % 5}/f{i}.txt`` (i = 0..19), 20 lines each, mode 0644;
* 1 template ``/srv/bench/app.conf`` rendered from a Jinja2 template with
  ``app_name="bench"``, ``host_name=<inventory host name>``, ``app_port=8000``;
* 1 line_in_file: line ``max_conn=100`` in ``/srv/bench/settings.ini``, matched
  by ``^max_conn=``.

Notes on the pyinfra mapping:

* The template text is given to ``files.template`` as an in-memory ``StringIO``
  rather than a ``.j2`` file, so that this benchmark adds no file beyond the ones
  the pyinfra side owns; pyinfra renders it with Jinja2 exactly as it would a
  file (``keep_trailing_newline=True``, so the output ends in a newline).
* The line_in_file is ONE operation, ``files.line``. No ``files.file`` step is
  needed to create settings.ini first: when the file does not exist pyinfra's
  ``FindInFile`` fact is ``None`` and the operation appends the line with
  ``echo 'max_conn=100' >> /srv/bench/settings.ini``, which creates the file
  (mode from the remote umask, 0644 for root on the lab). On a no-op run the
  fact finds ``max_conn=100`` and the operation reports no change.
"""

from __future__ import annotations

from io import BytesIO, StringIO

from pyinfra import host
from pyinfra.operations import files

ROOT = "/srv/bench"
N_DIRS = 5
N_FILES = 20
TEMPLATE_TEXT = "app={{ app_name }}\nhost={{ host_name }}\nport={{ app_port }}\n"


def file_content(i: int) -> str:
    return "".join(f"line {j} of file {i}\n" for j in range(20))


for d in range(N_DIRS):
    files.directory(
        name=f"dir d{d}",
        path=f"{ROOT}/d{d}",
        mode="755",
    )

for i in range(N_FILES):
    files.put(
        name=f"file f{i}",
        src=BytesIO(file_content(i).encode()),
        dest=f"{ROOT}/d{i % N_DIRS}/f{i}.txt",
        mode="644",
    )

files.template(
    name="template app.conf",
    src=StringIO(TEMPLATE_TEXT),
    dest=f"{ROOT}/app.conf",
    app_name="bench",
    host_name=host.name,
    app_port=8000,
)

files.line(
    name="line max_conn",
    path=f"{ROOT}/settings.ini",
    line="^max_conn=",
    replace="max_conn=100",
)
