"""The example production inventory stays valid as the inventory format evolves."""

from __future__ import annotations

from pathlib import Path

from deploykit.inventory import Inventory

EXAMPLE = Path(__file__).resolve().parents[2] / "inventories" / "production.example.yml"


def test_example_inventory_loads_with_its_groups_and_settings() -> None:
    inventory = Inventory.load(EXAMPLE)
    assert [h.name for h in inventory.select("web")] == ["prod-1", "prod-2"]
    prod1 = inventory.host("prod-1")
    assert (prod1.user, prod1.become, prod1.address) == ("deploy", True, "10.0.1.11")
    assert prod1.known_hosts == str(Path("~/.ssh/deploykit_known_hosts").expanduser())
    assert prod1.vars["service_manager"] == "systemd"
    assert inventory.host("db-1").vars["postgres_password_file"].endswith("db-1.password")
