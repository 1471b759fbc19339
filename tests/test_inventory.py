"""Ansible inventories (INI and YAML) read into devices by the built-in reader (the differential
test against ansible-core is test_inventory_diff.py)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from edgekit.errors import ConfigError
from edgekit.transport.inventory import expand_hosts, load_inventory, safe_filename
from edgekit.transport.inventory_parse import split_host_port

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


@pytest.fixture(autouse=True)
def builtin_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEKIT_INVENTORY_ENGINE", "builtin")


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
    # A host in both: edgekit.toml's entry adds its settings over the inventory's (precedence: the
    # fields the TOML entry sets, then the inventory's vars); groups are the union.
    write(tmp_path, "dup.ini", "[x]\nbench edgekit_target=raspberry-pi-5 ansible_host=10.0.0.9 ansible_port=2200 "
                               "ansible_python_interpreter=/opt/py/bin/python3\n")
    bench = select_devices(cfg, device="bench", inventory="dup.ini")[0]
    assert (bench.target, bench.path, bench.transport) == ("x86-avx2", "dev", "ssh")  # TOML's target and path
    assert (bench.host, bench.port, bench.python) == ("10.0.0.9", 2200, "/opt/py/bin/python3")  # the inventory's
    assert bench.groups == ["x", "fleet"]
    assert [d.name for d in select_devices(cfg, group="all", inventory="dup.ini")] == ["bench"]


def test_toml_entry_without_target_adds_settings_to_an_inventory_host(tmp_path: Path) -> None:
    from sshd_fixtures import write_project

    from edgekit.config import load
    from edgekit.fleet import select_devices

    write(tmp_path, "hosts.ini", INI)
    cfg = load(write_project(tmp_path, [{"name": "pi-01", "python": "/opt/venv/bin/python3", "connect_timeout": 3}],
                             deploy={"inventory": "hosts.ini"}, bundles={}))
    pi = select_devices(cfg, device="pi-01")[0]
    assert (pi.python, pi.connect_timeout) == ("/opt/venv/bin/python3", 3)  # edgekit.toml's
    assert (pi.target, pi.transport, pi.user, pi.groups) == ("rpi", "ssh", "pi", ["fleet", "pis"])  # the inventory's
    # without the inventory, a target-less entry is one clear line naming the field
    write(tmp_path, "nowhere.ini", "[y]\nother edgekit_target=x86-avx2\n")
    with pytest.raises(ConfigError, match=r"field 'devices.0.target': device 'pi-01' has no target, and no inventory "
                                          r"host or .*nowhere.ini is named 'pi-01'"):
        select_devices(cfg, device="pi-01", inventory="nowhere.ini")


def test_host_port_and_addresses() -> None:
    assert split_host_port("pi1.example.com:2222") == ("pi1.example.com", 2222)
    assert split_host_port("10.0.0.5:22") == ("10.0.0.5", 22)
    assert split_host_port("[fe80::1]:2200") == ("fe80::1", 2200)
    assert split_host_port("fe80::1") == ("fe80::1", None)  # bare IPv6: no port
    assert split_host_port("pi[1:3]:2300") == ("pi[1:3]", 2300)
    assert split_host_port("café-01:22") == ("café-01", 22)
    assert split_host_port("bad_:22") == ("bad_:22", None)  # not a host name: the whole text is the name


def test_header_comment_unicode_and_ungrouped(tmp_path: Path) -> None:
    inv = load_inventory(write(tmp_path, "hosts", "solo edgekit_target=rpi\n[fleet]   # the production pis\n"
                                                  "café-01:2222 edgekit_target=rpi ansible_user=1000\n"))
    assert list(inv.host_vars) == ["solo", "café-01"]
    cafe = inv.device("café-01")
    assert (cafe.host, cafe.port, cafe.user, cafe.groups) == ("café-01", 2222, "1000", ["fleet"])
    assert [d.name for d in inv.devices("ungrouped")] == ["solo"]
    assert inv.device("solo").groups == ["ungrouped"]


def test_yaml_without_extension(tmp_path: Path) -> None:
    inv = load_inventory(write(tmp_path, "hosts", "all:\n  children:\n    fleet:\n      hosts:\n        pi1:\n"
                                                  "          edgekit_target: rpi\n"))
    assert [d.name for d in inv.devices("fleet")] == ["pi1"]


def test_group_and_host_vars_files(tmp_path: Path) -> None:
    """The issue's case: host_vars/pi1.yml and group_vars/ beside the inventory decide the address."""
    write(tmp_path, "hosts", "[pis]\npi1\n[jetsons]\norin\n")
    for rel, text in {"host_vars/pi1.yml": "ansible_host: 192.168.50.1\nansible_port: 2222\n",
                      "group_vars/all.yml": "ansible_user: fleetuser\nedgekit_path: /srv/fleet\nedgekit_target: rpi\n",
                      "group_vars/jetsons": "edgekit_target: jetson-orin-nano\n"}.items():
        (tmp_path / rel).parent.mkdir(exist_ok=True)
        (tmp_path / rel).write_text(text)
    inv = load_inventory(tmp_path / "hosts")
    pi = inv.device("pi1")
    assert (pi.host, pi.port, pi.user, pi.path, pi.target) == ("192.168.50.1", 2222, "fleetuser", "/srv/fleet", "rpi")
    assert inv.device("orin").target == "jetson-orin-nano"


def test_legacy_names_win(tmp_path: Path) -> None:
    inv = load_inventory(write(tmp_path, "hosts", "[all:vars]\nansible_port=22\nansible_user=modern\nedgekit_target=rpi\n"
                                                  "[fleet]\npi1 ansible_ssh_port=2222 ansible_ssh_user=legacy\n"))
    pi = inv.device("pi1")
    assert (pi.port, pi.user) == (2222, "legacy")


def test_safe_filename() -> None:
    assert safe_filename("pi-01.lan") == "pi-01.lan"  # already safe: unchanged
    odd = ["café-01", "cafe-01_", "../../etc/passwd", "a/b", "a_b", "fe80::1", "機械-1", ".hidden", ""]
    names = [safe_filename(n) for n in odd]
    assert all(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", n) for n in names), names
    assert len(set(names)) == len(odd)  # no two devices share a file
    assert safe_filename("café-01").startswith("cafe-01-")


def test_run_files_use_safe_names() -> None:
    from datetime import datetime, timezone

    from edgekit.validate import run_file_name

    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    assert run_file_name("pi-01", when) == "20260102T030405Z-pi-01.json"
    odd = run_file_name("../x/café", when)
    assert "/" not in odd and odd.startswith("20260102T030405Z-x_cafe-") and odd.endswith(".json")


def test_device_names_from_inventories_are_accepted_but_not_blank() -> None:
    from pydantic import ValidationError

    from edgekit.config import DeviceSpec

    for name in ("café-01", "fe80::1", "pi1.example.com"):
        assert DeviceSpec(name=name, target="rpi").name == name
    for name in ("", "a b", "-oProxyCommand=x", "tab\there"):
        with pytest.raises(ValidationError):
            DeviceSpec(name=name, target="rpi")


def test_ungrouped_is_a_selectable_group(tmp_path: Path) -> None:
    from sshd_fixtures import write_project

    from edgekit.config import load
    from edgekit.fleet import select_devices

    write(tmp_path, "hosts", "solo edgekit_target=x86-avx2 ansible_connection=local\n[fleet]\npi1 edgekit_target=rpi\n")
    cfg = load(write_project(tmp_path, [], deploy={"inventory": "hosts"}, bundles={}))
    assert [d.name for d in select_devices(cfg, group="ungrouped")] == ["solo"]
    assert [d.name for d in select_devices(cfg, group="all")] == ["solo", "pi1"]


def test_several_sources_on_the_command_line(tmp_path: Path) -> None:
    """``-i a -i b`` reads both, as ``ansible -i a -i b``: later sources add hosts and override vars."""
    from click.testing import CliRunner
    from sshd_fixtures import write_project

    from edgekit.cli import main

    config = write_project(tmp_path / "proj", [], bundles={})
    write(tmp_path, "a.ini", "[fleet]\npi1 edgekit_target=rpi\n")
    write(tmp_path, "b.yml", "fleet:\n  hosts:\n    pi1:\n      ansible_host: 10.7.0.1\n    pi2:\n      edgekit_target: rpi\n")
    res = CliRunner().invoke(main, ["status", "-d", "nope", "--config", str(config),
                                    "-i", str(tmp_path / "a.ini"), "-i", str(tmp_path / "b.yml")])
    assert res.exit_code == 2 and "no device named 'nope' (devices: pi1, pi2)" in res.output, res.output
    assert f"or {tmp_path / 'a.ini'} or {tmp_path / 'b.yml'}" in res.output
    inv = load_inventory([tmp_path / "a.ini", tmp_path / "b.yml"])
    assert inv.device("pi1").host == "10.7.0.1"
