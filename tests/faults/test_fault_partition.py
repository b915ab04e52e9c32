"""A network partition while a command runs: the connection notices the dead peer.

Without dead-peer detection a command whose host vanished mid-run waits for its
command timeout (ten minutes by default) before anything is reported.
"""

from __future__ import annotations

import threading

import pytest
from faultkit import Faults

from deploykit.connection import Connection
from deploykit.errors import ConnectError
from deploykit.inventory import Inventory
from deploykit.testing.lab import Lab

pytestmark = pytest.mark.lab


def test_a_partition_mid_command_is_a_lost_connection_not_a_hang(
        lab: Lab, lab_inventory: Inventory) -> None:
    faults = Faults(lab)
    conn = Connection(lab_inventory.host("web-2"), keepalive=1, dead_after=2,
                      command_timeout=120)
    conn.run("true")  # connected, before the partition
    cut = threading.Timer(1.0, faults.partition, args=("web-2",))
    cut.start()
    try:  # `sleep 60` would end well (exit 0) if the partition went unnoticed
        with pytest.raises(ConnectError, match=r"connection to .* lost while running 'sleep 60'"):
            conn.run("sleep 60")
    finally:
        cut.join()
        faults.heal("web-2")
        conn.close()
    assert Connection(lab_inventory.host("web-2")).run("echo back").stdout == "back\n"
