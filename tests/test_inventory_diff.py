"""Differential test: edgekit's inventory engines against the real Ansible, host by host.

The oracle is ansible-core itself, run as a user runs it:
- ``ansible-inventory -i ... --list`` gives each host's groups and merged variables;
- ``ansible all -m ping`` with a stand-in ssh executable records the ssh command line Ansible's
  ssh connection builds for each host, which is where Ansible decides the address, port, user and
  key (legacy ``ansible_ssh_*`` against modern names, host:port, precedence).
Both edgekit engines (built-in and through ansible-inventory) must give the same device for every
host of the corpus; a host with no edgekit_target must be refused by both.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import pytest
from inventory_corpus import CORPUS

from edgekit.errors import ConfigError
from edgekit.transport.inventory import USED_VARS, load_inventory
from edgekit.transport.inventory_ansible import ansible_executable

FAKE_SSH = textwrap.dedent("""\
    #!{python}
    import json, os, sys, uuid
    with open(os.path.join(os.environ["FAKESSH_DIR"], uuid.uuid4().hex + ".json"), "w") as f:
        json.dump(sys.argv[1:], f)
    sys.exit(255)
    """)


@pytest.fixture(scope="module")
def ansible_bins() -> Tuple[str, str]:
    inv, adhoc = ansible_executable("ansible-inventory"), ansible_executable("ansible")
    if inv is None or adhoc is None:
        if os.environ.get("CI"):
            pytest.fail("ansible-core is not installed (pip install 'edgekit[ansible]'); CI must run this test")
        pytest.skip("ansible-core is not installed")
    return inv, adhoc


def write_case(root: Path, files: Dict[str, str]) -> None:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text, encoding="utf-8")


def _ansible_env(tmp: Path) -> Dict[str, str]:
    return dict(os.environ, ANSIBLE_INVENTORY_UNPARSED_FAILED="1", ANSIBLE_HOST_KEY_CHECKING="0",
                ANSIBLE_NOCOLOR="1", ANSIBLE_LOCAL_TEMP=str(tmp / "ansible-tmp"))


def ansible_list(exe: str, sources: List[Path], tmp: Path) -> Dict[str, Any]:
    cwd = tmp / "cwd"
    cwd.mkdir(exist_ok=True)
    argv = [exe] + [a for s in sources for a in ("-i", str(s))] + ["--list"]
    proc = subprocess.run(argv, cwd=cwd, env=_ansible_env(tmp), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def groups_by_host(out: Dict[str, Any]) -> Dict[str, set]:
    """Every group (but 'all') holding each host, directly or through children, from --list."""
    parents: Dict[str, set] = {}
    direct: Dict[str, set] = {}
    for g, body in out.items():
        if g == "_meta":
            continue
        for child in body.get("children", []):
            parents.setdefault(child, set()).add(g)
        for h in body.get("hosts", []):
            direct.setdefault(h, set()).add(g)
    result = {}
    for h in set(out["_meta"]["hostvars"]) | set(direct):
        found, todo = set(), list(direct.get(h, ()))
        while todo:
            g = todo.pop()
            if g not in found:
                found.add(g)
                todo.extend(parents.get(g, ()))
        result[h] = found - {"all"}
    return result


def ssh_commands(exe: str, sources: List[Path], tmp: Path) -> Dict[str, List[str]]:
    """The ssh command line Ansible runs for each host (keyed by inventory name)."""
    fake = tmp / "fake-ssh"
    fake.write_text(FAKE_SSH.format(python=sys.executable))
    fake.chmod(0o755)
    out = tmp / "ssh-calls"
    out.mkdir()
    env = dict(_ansible_env(tmp), FAKESSH_DIR=str(out), ANSIBLE_SSH_EXECUTABLE=str(fake), ANSIBLE_SSH_RETRIES="0")
    argv = [exe] + [a for s in sources for a in ("-i", str(s))] + [
        "all", "-m", "ansible.builtin.ping", "-f", "20",
        # tags each ssh call with the inventory name (extra vars touch only this variable)
        "-e", json.dumps({"ansible_ssh_extra_args": "-o SetEnv=EK_HOST={{ inventory_hostname }}"})]
    subprocess.run(argv, cwd=tmp / "cwd", env=env, capture_output=True, text=True, timeout=300)
    calls: Dict[str, List[str]] = {}
    for f in out.iterdir():
        argv_ = json.loads(f.read_text())
        tag = next(a for a in argv_ if a.startswith("SetEnv=EK_HOST="))
        calls.setdefault(tag.split("=", 2)[2], argv_)
    return calls


def _option(argv: List[str], name: str) -> Optional[str]:
    for a in argv:
        if a.startswith(name + "="):
            return a.split("=", 1)[1].strip('"')
    return None


def expected_devices(out: Dict[str, Any], calls: Dict[str, List[str]]) -> Dict[str, Optional[Dict[str, Any]]]:
    """What Ansible says each host is: None for a host edgekit must refuse (no edgekit_target)."""
    hostvars = out["_meta"]["hostvars"]
    expected: Dict[str, Optional[Dict[str, Any]]] = {}
    for host, groups in groups_by_host(out).items():
        v = hostvars.get(host, {})
        if v.get("edgekit_target") is None:
            expected[host] = None
            continue
        local = v.get("ansible_connection") == "local"
        argv = calls.get(host)
        assert local == (argv is None), f"{host}: ssh called={argv is not None}, local={local}"
        port = _option(argv, "Port") if argv else None
        expected[host] = {
            "transport": "local" if local else "ssh",
            "host": argv[-2] if argv else host,  # ssh ... ADDRESS COMMAND
            "port": int(port) if port else None,
            "user": _option(argv, "User") if argv else None,
            "identity_file": _option(argv, "IdentityFile") if argv else None,
            "target": str(v["edgekit_target"]),
            "path": str(v.get("edgekit_path", "~/edgekit")),
            "groups": groups,
        }
    return expected


def _device_fields(d: Any) -> Dict[str, Any]:
    fields = {k: getattr(d, k) for k in ("transport", "host", "port", "user", "identity_file", "target", "path")}
    if d.identity_file:  # Ansible expands ~ in the key's path; edgekit's ssh transport does when it reads it
        fields["identity_file"] = os.path.expanduser(d.identity_file)
    if d.transport == "local":  # Ansible does not compute ssh settings for a local host
        fields.update(port=None, user=None, identity_file=None)
    return {**fields, "groups": set(d.groups)}


@pytest.mark.parametrize("case", sorted(CORPUS))
def test_engines_agree_with_ansible(case: str, tmp_path: Path, ansible_bins: Tuple[str, str]) -> None:
    files, rel_sources = CORPUS[case]
    write_case(tmp_path / "inv", files)
    sources = [tmp_path / "inv" / s for s in rel_sources]
    out = ansible_list(ansible_bins[0], sources, tmp_path)
    expected = expected_devices(out, ssh_commands(ansible_bins[1], sources, tmp_path))
    assert expected, "the case defines hosts"

    for engine in ("builtin", "ansible"):
        inv = load_inventory(sources, engine=engine)
        assert set(inv.host_vars) == set(expected), engine
        for host, want in expected.items():
            if want is None:
                with pytest.raises(ConfigError, match=f"host '{host}' has no edgekit_target"):
                    inv.device(host)
                continue
            identity = inv.device(host)
            got = _device_fields(identity)
            if want["transport"] == "local":
                want = {**want, "host": identity.host}  # ansible_host of a local host is not used by Ansible
            assert got == want, f"{engine}: {host}"
        if engine == "builtin":  # the raw variables too, including the ones no ssh call shows
            hostvars = out["_meta"]["hostvars"]
            for host in expected:
                mine = {k: v for k, v in inv.variables(host).items() if k in USED_VARS}
                theirs = {k: v for k, v in hostvars.get(host, {}).items() if k in USED_VARS}
                assert mine == theirs, f"builtin variables of {host}"


def test_corpus_covers_the_issue_categories() -> None:
    """The corpus keeps the cases the issue lists (a guard against trimming it)."""
    needed = {"group_vars", "host_vars", "ansible_ssh_port", "ansible_group_priority", ":2222", "]   #",
              "café", "ansible_user: 1000", "[01:03]", ":children", "a/hosts.ini"}
    text = json.dumps(CORPUS, ensure_ascii=False)
    assert not [n for n in needed if n not in text]
    assert any(not Path(rel).suffix and text.startswith("all:") for files, _ in CORPUS.values() for rel, text in files.items())
