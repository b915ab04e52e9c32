"""The lab's configuration, checked without building it: fleets, networks, the
inventory it would write (users, jump hosts) and the client's ssh_config."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from deploykit.errors import LabError
from deploykit.inventory import Inventory
from deploykit.testing import labconfig
from deploykit.testing.lab import (
    MAX_HOSTS,
    MAX_LIGHT_HOSTS,
    Lab,
    LabHostSpec,
    bastion_fleet,
    light_fleet,
    parse_fleet,
)


def test_parse_fleet_forms() -> None:
    assert [s.name for s in parse_fleet("3")] == ["web-1", "web-2", "db-1"]
    assert parse_fleet("light:3") == [LabHostSpec(f"node-{i}", ("light",)) for i in (1, 2, 3)]
    assert parse_fleet("b:bastion,w:web@inner") == [LabHostSpec("b", ("bastion",)),
                                                     LabHostSpec("w", ("web",), inner=True)]
    assert parse_fleet("bastion") == bastion_fleet()
    with pytest.raises(LabError, match="'@outer' is not a network"):
        parse_fleet("w:web@outer")


def test_light_fleets_may_be_large_mixed_ones_may_not() -> None:
    Lab(light_fleet(200), name="zz", network="198.18.16.0/24")
    with pytest.raises(LabError, match=f"at most {MAX_HOSTS} hosts \\({MAX_LIGHT_HOSTS} when"):
        Lab([*light_fleet(30), LabHostSpec("web-1", ("web",))], name="zz",
            network="198.18.16.0/24")
    with pytest.raises(LabError, match="1 to 250 hosts"):
        light_fleet(251)


@pytest.mark.parametrize(("network", "message"), [
    ("10.0.0.0/24", "outside 198.18.0.0/15, the range that never leaves this machine"),
    ("198.20.0.0/24", "outside 198.18.0.0/15"),
    ("198.18.0.0/28", "too small for 6 hosts"),
    ("not-a-network", "lab network 'not-a-network'"),
])
def test_a_lab_network_outside_the_lab_range_or_too_small_is_refused(
    network: str, message: str
) -> None:
    with pytest.raises(LabError, match=message):
        Lab(light_fleet(6), name="zz", network=network)


def test_a_bastion_lab_needs_a_separate_inner_network() -> None:
    with pytest.raises(LabError, match="needs an inner network"):
        Lab(bastion_fleet(), name="zz", network="198.18.20.0/27", inner_network=None)
    with pytest.raises(LabError, match="overlaps the lab network"):
        Lab(bastion_fleet(), name="zz", network="198.18.20.0/26",
            inner_network="198.18.20.32/27")


def test_the_inventory_of_a_bastion_lab_and_its_deploy_user() -> None:
    lab = Lab(bastion_fleet(), name="zz", network="198.18.20.0/27",
              inner_network="198.18.20.32/27")
    assert lab.address("bastion-1") == "198.18.20.11"
    assert lab.address("web-1") == "198.18.20.44" == lab.inner_address("web-1")
    inventory = Inventory.from_dict(lab.inventory(user="deploy"), source="<test>")
    web = inventory.host("web-1")
    assert (web.user, web.become) == ("deploy", True)
    # the bastion's inventory name (resolved to its login where the inventory knows jumps)
    assert web.vars["jump"] in ("bastion-1", "deploy@198.18.20.11:22")
    assert "jump" not in inventory.host("bastion-1").vars
    root = Inventory.from_dict(lab.inventory(), source="<test>").host("db-1")
    assert (root.user, root.become) == ("root", False)
    assert root.vars["lab_inner_network"] == "198.18.20.32/27"


def test_ssh_config_jumps_through_the_bastion_and_checks_host_keys() -> None:
    text = labconfig.ssh_client_config({"bastion-1": "198.18.20.11", "web-1": "198.18.20.44"},
                                       "/k", "/kh", jumps={"web-1": "bastion-1"})
    bastion, web = text.split("\n\n")
    assert "ProxyJump" not in bastion
    assert "ProxyJump bastion-1" in web and "StrictHostKeyChecking yes" in web


def test_the_deploy_user_may_sudo_without_a_password_and_nothing_else_is_granted() -> None:
    assert labconfig.deploy_sudoers("deploy").splitlines()[-1] == \
        "deploy ALL=(ALL:ALL) NOPASSWD: ALL"
    assert "AuthorizedKeysFile /etc/ssh/authorized_keys.d/%u" in labconfig.SSHD_CONFIG
    assert "PasswordAuthentication no" in labconfig.SSHD_CONFIG


def test_a_lab_inventory_file_names_its_lab(tmp_path: Path) -> None:
    lab = Lab(bastion_fleet(), name="zz", network="198.18.20.0/27",
              inner_network="198.18.20.32/27")
    path = tmp_path / "lab.yml"
    path.write_text(yaml.safe_dump(lab.inventory(user="deploy")))
    again = Lab.from_inventory(path)
    assert (again.name, str(again.network), str(again.inner_network), again.inventory_user) \
        == ("zz", "198.18.20.0/27", "198.18.20.32/27", "deploy")
    assert again.inventory_path == path


def test_a_file_that_is_no_lab_inventory_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "production.yml"
    path.write_text("all:\n  hosts:\n    web-1: {address: 192.0.2.1}\n")
    with pytest.raises(LabError, match="is not a lab inventory"):
        Lab.from_inventory(path)
    with pytest.raises(LabError, match="cannot read lab inventory"):
        Lab.from_inventory(tmp_path / "missing.yml")
