"""deploykit's tasks, one module per domain.

Each module's functions build a :class:`deploykit.task.Task`; run it with
``task.run(connection)`` or hand a list of them to :class:`deploykit.Runner`.

* :mod:`deploykit.tasks.files` — directory, file, template, copy, line_in_file,
  symlink, absent
* :mod:`deploykit.tasks.system` — command (with guards), user, group, package check
"""
