"""Day-2 operations on a running fleet, between deploys.

One module per job, each usable from Python and driven by the invoke tasks in
:mod:`deploykit.cli.ops`:

* :mod:`~deploykit.ops.hosts`: which hosts a command acts on (``--host``/``--group``);
* :mod:`~deploykit.ops.exec`: one shell command on many hosts in parallel;
* :mod:`~deploykit.ops.logs`: log lines of many hosts, merged by time, or followed;
* :mod:`~deploykit.ops.details`: what each host holds (releases, services, disk, backups);
* :mod:`~deploykit.ops.prune`: old releases, old databases and old backups, listed, removed.

Maintenance mode is a task like any other: :mod:`deploykit.tasks.maintenance`.
"""
