"""Bad inventories: one line naming the file (and the line, where there is one), never exit 70,
through both engines and through the CLI."""
from __future__ import annotations

import os
import re
from pathlib import Path
import pytest

from edgekit.errors import ConfigError
from edgekit.transport.inventory import load_inventory
from edgekit.transport.inventory_ansible import ansible_executable

# name -> (file name, text, what the built-in message says, its line or None)
BAD = {
    "yaml_hosts_as_list": ("hosts.yml", "all:\n  children:\n    fleet:\n      hosts:\n        - pi1\n        - pi2\n",
                           r"'hosts' entry for group 'fleet'.*requires a mapping, found a list", 4),
    "yaml_children_as_list": ("inventory", "fleet:\n  children:\n    - pis\n",
                              r"'children' entry for group 'fleet'.*requires a mapping, found a list", 2),
    "yaml_host_to_scalar": ("hosts.yaml", "fleet:\n  hosts:\n    pi1: 10.0.0.1\n",
                            r"host 'pi1' in group 'fleet' must map to a mapping of variables", 3),
    "yaml_group_key_typo": ("hosts.yml", "all:\n  hostz:\n    pi1:\n", r"group 'all': unknown key 'hostz'", 2),
    "yaml_integer_host": ("hosts.yml", "fleet:\n  hosts:\n    1234:\n", r"host pattern 1234 .* must be a string", 3),
    "yaml_malformed": ("hosts.yml", "fleet: [1\n", r"malformed YAML", 2),
    "yaml_malformed_no_extension": ("hosts", "all:\n  children:\n    fleet:\n      hosts: [pi1\n",
                                    r"malformed YAML", 5),
    "ini_unclosed_section": ("hosts.ini", "[fleet\npi1\n", r"not closed", 1),
    "ini_unknown_section_type": ("hosts", "[fleet:bogus]\npi1\n", r"section \[fleet:bogus\] has an unknown type", 1),
    "ini_vars_for_undeclared_group": ("hosts", "[pis]\npi1\n[fleet:vars]\na=1\n", r"\[fleet:vars\].*never declared", 3),
    "ini_undeclared_child": ("hosts", "[fleet:children]\npis\n", r"\[fleet:children\] names group 'pis'", 2),
    "ini_missing_value": ("hosts", "[pis]\npi ansible_host\n", r"expected key=value after the host name", 2),
    "ini_trailing_colon": ("hosts", "[pis]\npi1:\n", r"reserved for a port", 2),
    "ini_children_loop": ("hosts", "[a:children]\nb\n[b:children]\na\n", r"its own ancestor", 4),
    "ini_bad_port": ("hosts", "[pis]\npi1 ansible_port=99999 edgekit_target=rpi\n", r"port must be a number from 1 to 65535", None),
    "ini_password": ("hosts", "[pis]\npi1 ansible_password=x edgekit_target=rpi\n", r"never stores passwords", None),
    "ini_no_target": ("hosts", "[pis]\npi1\n", r"host 'pi1' has no edgekit_target", None),
    "ini_blank_range": ("hosts", "[pis]\npi[1:]\n", r"must give an end", 2),
}

ENGINES = ["builtin", "ansible"]


def _need_ansible() -> None:
    if ansible_executable("ansible-inventory") is None:
        if os.environ.get("CI"):
            pytest.fail("ansible-core is not installed (pip install 'edgekit[ansible]'); CI must run this test")
        pytest.skip("ansible-core is not installed")


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_inventory_is_one_clear_line(case: str, engine: str, tmp_path: Path) -> None:
    if engine == "ansible":
        _need_ansible()
    name, text, builtin_says, line = BAD[case]
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_inventory(path, engine=engine).devices()
    msg = info.value.message
    assert "\n" not in msg and str(path) in msg
    if engine == "builtin":
        assert info.value.message.startswith(f"{path}:{line}: " if line else f"{path}: ")
        assert re.search(builtin_says, msg), msg
    elif line:  # Ansible names the file; the line comes from the built-in reader's finding
        assert msg.startswith(f"{path}:{line}: ansible-inventory: "), msg


def _project(tmp_path: Path) -> Path:
    from sshd_fixtures import write_project

    return write_project(tmp_path / "proj", [], bundles={})


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("case", ["yaml_hosts_as_list", "yaml_host_to_scalar", "ini_unclosed_section", "ini_no_target"])
def test_cli_exits_2_with_one_line(case: str, engine: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from edgekit.cli import main

    if engine == "ansible":
        _need_ansible()
    monkeypatch.setenv("EDGEKIT_INVENTORY_ENGINE", engine)
    config = _project(tmp_path)
    name, text, _, _ = BAD[case]
    (tmp_path / name).write_text(text)
    res = CliRunner().invoke(main, ["status", "-d", "pi1", "--config", str(config), "-i", str(tmp_path / name)])
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert lines[0].startswith("error: ") and str(tmp_path / name) in lines[0]
    assert "Traceback" not in res.output and all(ln.startswith(("error: ", "hint: ")) for ln in lines)


def test_engine_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    from edgekit.transport import inventory_ansible
    from edgekit.transport.inventory import inventory_engine

    monkeypatch.setenv("EDGEKIT_INVENTORY_ENGINE", "sideways")
    with pytest.raises(ConfigError, match="EDGEKIT_INVENTORY_ENGINE='sideways': expected one of auto, ansible, builtin"):
        inventory_engine()
    monkeypatch.setenv("EDGEKIT_INVENTORY_ENGINE", "builtin")
    assert inventory_engine() == "builtin"
    # ansible-core absent: auto falls back to the built-in reader, a forced 'ansible' says what to install
    monkeypatch.setattr(inventory_ansible, "ansible_executable", lambda name: None)
    assert inventory_engine("auto") == "builtin"
    with pytest.raises(ConfigError, match="ansible-inventory is not installed") as info:
        inventory_engine("ansible")
    assert "edgekit[ansible]" in (info.value.hint or "")


def test_ansible_is_found_beside_the_interpreter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from edgekit.transport.inventory_ansible import ansible_executable as find

    bindir = tmp_path / "venv" / "bin"
    bindir.mkdir(parents=True)
    (bindir / "ansible-inventory").write_text("#!/bin/sh\n")
    (bindir / "ansible-inventory").chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(bindir / "python"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert find("ansible-inventory") == str(bindir / "ansible-inventory")
    assert find("ansible") is None


def test_dynamic_sources_need_ansible(tmp_path: Path) -> None:
    script = tmp_path / "inventory.py"
    script.write_text("#!/usr/bin/env python3\nprint('{}')\n")
    with pytest.raises(ConfigError, match="dynamic inventory script needs Ansible itself"):
        load_inventory(script, engine="builtin")
    plugin = tmp_path / "fleet.aws_ec2.yml"
    plugin.write_text("plugin: amazon.aws.aws_ec2\nregions: [eu-west-1]\n")
    with pytest.raises(ConfigError, match="inventory plugin 'amazon.aws.aws_ec2' needs Ansible itself"):
        load_inventory(plugin, engine="builtin")


def test_unknown_plugin_through_ansible_is_one_line(tmp_path: Path) -> None:
    _need_ansible()
    plugin = tmp_path / "fleet.nope.yml"
    plugin.write_text("plugin: example.invalid.nope\n")
    with pytest.raises(ConfigError, match=r"unknown plugin 'example.invalid.nope'") as info:
        load_inventory(plugin, engine="ansible")
    assert "\n" not in info.value.message


def test_missing_source(tmp_path: Path) -> None:
    for engine in ENGINES:
        with pytest.raises(ConfigError, match="missing.ini: cannot read inventory: no such file"):
            load_inventory(tmp_path / "missing.ini", engine=engine)


def test_templates(tmp_path: Path) -> None:
    """Ansible evaluates templates; the built-in reader refuses them rather than use '{{ ... }}' as an address."""
    inv = tmp_path / "hosts"
    inv.write_text("[fleet]\npi1 ansible_host='{{ inventory_hostname }}.lan' edgekit_target=rpi\n"
                   "pi2 edgekit_target='{{ base }}-5'\n[fleet:vars]\nbase=raspberry-pi\n")
    with pytest.raises(ConfigError, match=r"host 'pi1': ansible_host is a template .*does not evaluate templates"):
        load_inventory(inv, engine="builtin").devices()
    _need_ansible()
    devices = {d.name: d for d in load_inventory(inv, engine="ansible").devices()}
    assert devices["pi1"].host == "pi1.lan" and devices["pi2"].target == "raspberry-pi-5"
    assert devices["pi2"].host == "pi2"
    inv.write_text("[fleet]\npi1 edgekit_target=rpi ansible_port='{{ 2000 + 22 }}'\n"
                   "pi2 edgekit_target=rpi ansible_host='{{ undefined_var }}'\n")
    with pytest.raises(ConfigError, match=r"host 'pi2': Ansible could not evaluate its templates: .*undefined_var") as info:
        load_inventory(inv, engine="ansible").devices()
    assert "\n" not in info.value.message
    inv.write_text("[fleet]\npi1 edgekit_target=rpi ansible_port='{{ 2000 + 22 }}'\n")
    assert load_inventory(inv, engine="ansible").device("pi1").port == 2022


def test_mutated_inventories_never_crash(tmp_path: Path) -> None:
    """Thousands of damaged variants of the corpus files: the built-in reader gives devices or one
    ConfigError line, never another exception (which the CLI would report as exit 70)."""
    import random

    from inventory_corpus import CORPUS

    rng = random.Random(17)
    alphabet = list("[]:=#;{}-_,'\"\\\n\t ") + ["  ", "\n[", "]\n", ": ", "- ", "{{", "[1:", ":9]", "é", "\x00"]
    texts = [(rel, text) for files, _ in CORPUS.values() for rel, text in files.items()]
    tried = failed = 0
    for i in range(1500):
        rel, text = rng.choice(texts)
        chars = list(text)
        for _ in range(rng.randint(1, 4)):
            pos = rng.randrange(len(chars) + 1)
            op = rng.random()
            if op < 0.4 and chars:
                del chars[min(pos, len(chars) - 1)]
            elif op < 0.8:
                chars.insert(pos, rng.choice(alphabet))
            else:
                lines = "".join(chars).splitlines(keepends=True)
                j = rng.randrange(len(lines))
                chars = list("".join(lines[:j] + [lines[j]] * 2 + lines[j + 1:]))
        d = tmp_path / str(i)
        (d / Path(rel).parent).mkdir(parents=True, exist_ok=True)
        path = d / rel
        path.write_text("".join(chars), encoding="utf-8", errors="surrogatepass")
        tried += 1
        try:
            load_inventory(path, engine="builtin").devices()
        except ConfigError as exc:
            failed += 1
            assert "\n" not in exc.message, exc.message
    assert tried == 1500 and 0 < failed < tried  # both outcomes were exercised
