"""Runtimes: what a colour is on a host.

:mod:`.release` (a release directory + venv + process manager) and :mod:`.compose`
(a compose project); :mod:`.ledger` records every release's life on each host.
"""
