"""Ansible inventories (INI and YAML) read into devices, without Ansible."""
from __future__ import annotations

from pathlib import Path

import pytest

from edgekit.errors import ConfigError
from edgekit.transport.inventory import expand_hosts, load_inventory

INI = """\
# edge fleet
lab-pc ansible_connection=local edgekit_target=x86-avx2 edgekit_path=/tmp/lab

[pis]
pi-[01:03] ansible_user=pi
pi-special ansible_host=10.0.0.99 ansible_port=2222 edgekit_target=raspberry-pi-4  # inline comment

[pis:vars]
edgekit_target=rpi
ansible_python_interpreter=/usr/bin/python3.11
edgekit_path="/opt/edge kit"

[jetsons]
orin ansible_host=10.0.1.5 ansible_ssh_private_key_file=~/.ssh/jetson ansible_python_interpreter=auto_silent

[jetsons:vars]
edgekit_target=jetson-orin-nano

[fleet:children]
pis
jetsons

[fleet:vars]
edgekit_path=/srv/edgekit
ansible_user=edge

[all:vars]
ansible_port=22
"""

YAML = """\
all:
  vars:
    ansible_user: edge
    edgekit_path: /srv/edgekit
  hosts:
    lab-pc:
      ansible_connection: local
      edgekit_target: x86-avx2
  children:
    fleet:
      vars:
        edgekit_path: /opt/fleet
      children:
        pis:
          hosts:
            pi-[1:2]:
            pi-special:
              ansible_host: 10.0.0.99
              ansible_port: 2222
              edgekit_target: raspberry-pi-4
          vars:
            edgekit_target: raspberry-pi-5
            ansible_python_interpreter: /usr/bin/python3.11
        jetsons:
          hosts:
            orin:
              ansible_host: 10.0.1.5
          vars:
            edgekit_target: jetson-orin-nano
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_ini_groups_children_and_vars(tmp_path: Path) -> None:
    inv = load_inventory(write(tmp_path, "hosts.ini", INI))
    assert inv.hosts_in("pis") == ["pi-01", "pi-02", "pi-03", "pi-special"]
    assert inv.hosts_in("fleet") == ["pi-01", "pi-02", "pi-03", "pi-special", "orin"]
    assert len(inv.hosts_in("all")) == 6

    pi = inv.device("pi-02")
    assert (pi.host, pi.user, pi.target, pi.transport) == ("pi-02", "pi", "rpi", "ssh")
    assert pi.python == "/usr/bin/python3.11"
    # child group vars (pis) win over the parent's (fleet); inline host vars win over both
    assert pi.path == "/opt/edge kit"
    assert pi.port == 22  # from [all:vars]
    assert set(pi.groups) == {"pis", "fleet"}

    special = inv.device("pi-special")
    assert (special.host, special.port, special.target) == ("10.0.0.99", 2222, "raspberry-pi-4")
    assert special.user == "edge"  # fleet:vars, since pi-special sets no ansible_user inline

    orin = inv.device("orin")
    assert orin.identity_file == "~/.ssh/jetson" and orin.python == "python3"  # auto_* keeps the default
    assert orin.path == "/srv/edgekit" and orin.target == "jetson-orin-nano"

    lab = inv.device("lab-pc")
    assert lab.transport == "local" and lab.path == "/tmp/lab" and lab.groups == ["ungrouped"]


def test_yaml_groups_children_and_vars(tmp_path: Path) -> None:
    inv = load_inventory(write(tmp_path, "hosts.yml", YAML))
    assert inv.hosts_in("fleet") == ["pi-1", "pi-2", "pi-special", "orin"]
    pi = inv.device("pi-1")
    assert (pi.target, pi.user, pi.path, pi.python) == ("raspberry-pi-5", "edge", "/opt/fleet", "/usr/bin/python3.11")
    special = inv.device("pi-special")
    assert (special.host, special.port, special.target) == ("10.0.0.99", 2222, "raspberry-pi-4")
    assert inv.device("orin").groups == ["fleet", "jetsons"]
    assert inv.device("lab-pc").transport == "local"
    assert [d.name for d in inv.devices("jetsons")] == ["orin"]


def test_host_ranges() -> None:
    assert expand_hosts("pi-[01:03]") == ["pi-01", "pi-02", "pi-03"]
    assert expand_hosts("n[0:10:5]") == ["n0", "n5", "n10"]
    assert expand_hosts("r[a:c]-[1:2]") == ["ra-1", "ra-2", "rb-1", "rb-2", "rc-1", "rc-2"]


def test_passwords_are_refused(tmp_path: Path) -> None:
    inv = load_inventory(write(tmp_path, "hosts", "[pis]\npi ansible_password=hunter2 edgekit_target=rpi\n"))
    with pytest.raises(ConfigError, match="never stores passwords"):
        inv.device("pi")


def test_missing_target_and_unknown_group_are_clear(tmp_path: Path) -> None:
    inv = load_inventory(write(tmp_path, "hosts", "[pis]\npi ansible_host=10.0.0.1\n"))
    with pytest.raises(ConfigError, match="no edgekit_target"):
        inv.device("pi")
    with pytest.raises(ConfigError, match="no group named 'nope'.*pis"):
        inv.hosts_in("nope")


def test_malformed_inventories(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"hosts:2: expected key=value"):
        load_inventory(write(tmp_path, "hosts", "[pis]\npi ansible_host\n"))
    with pytest.raises(ConfigError, match="unknown key"):
        load_inventory(write(tmp_path, "h.yml", "all:\n  hostz: {}\n"))
    with pytest.raises(ConfigError, match="cannot read inventory"):
        load_inventory(tmp_path / "missing.ini")


def test_inventory_devices_join_the_config(tmp_path: Path) -> None:
    from sshd_fixtures import write_project

    from edgekit.config import load
    from edgekit.fleet import select_devices

    write(tmp_path, "hosts.ini", INI)
    cfg = load(write_project(tmp_path, [{"name": "bench", "target": "x86-avx2", "path": "dev", "groups": ["fleet"]}],
                             deploy={"inventory": "hosts.ini"}, bundles={}))
    assert [d.name for d in select_devices(cfg, group="jetsons")] == ["orin"]
    assert [d.name for d in select_devices(cfg, group="fleet")] == ["bench", "pi-01", "pi-02", "pi-03", "pi-special", "orin"]
    assert select_devices(cfg, device="pi-special")[0].port == 2222
    with pytest.raises(ConfigError, match="no device in group 'gpu'"):
        select_devices(cfg, group="gpu")
    write(tmp_path, "dup.ini", "[x]\nbench edgekit_target=x86-avx2\n")
    with pytest.raises(ConfigError, match="defined both"):
        select_devices(cfg, group="all", inventory="dup.ini")
