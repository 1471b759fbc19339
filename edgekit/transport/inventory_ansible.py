"""Inventories read by Ansible itself: ``ansible-inventory -i SRC ... --list`` in a subprocess.

ansible-core is GPL-3.0 and edgekit Apache-2.0, so edgekit never imports it: it runs Ansible's own
command-line programs and reads what they print (JSON), as it would run ssh. That also gives users
everything Ansible reads (directories, several sources, inventory plugins such as aws_ec2 or
netbox, scripts, vars plugins, vault) with Ansible's precedence.

``ansible-inventory --list`` does not evaluate templates (``ansible_host: "{{ ... }}"``); where one
of the variables edgekit uses holds one, ``ansible -m ansible.builtin.debug`` evaluates it for
those hosts, on this machine (the debug action never connects to the host).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..errors import ConfigError
from .inventory import USED_VARS, Inventory, device_from_vars, is_template
from .inventory_parse import YAML_EXTENSIONS, InventoryData, yaml_mapping

TIMEOUT_S = 600  # dynamic inventories (cloud APIs) can be slow; a hung one must still end
_FAILED = re.compile(r"^\[WARNING\]: Failed to parse inventory with '([\w.]+)' plugin: (.*)$", re.M)
_SKIPPED = re.compile(r"^\[WARNING\]: (Skipping .*)$", re.M)
_NOISE = ("no root 'plugin' key found", "not a valid YAML inventory plugin config file",
          "YAML inventory has invalid structure", "Plugin configuration YAML file, not YAML inventory")


def ansible_executable(name: str) -> Optional[str]:
    """``name`` beside this interpreter first (the virtualenv edgekit runs from), then on PATH."""
    here = Path(sys.executable).parent / name
    if here.is_file() and os.access(here, os.X_OK):
        return str(here)
    return shutil.which(name)


def ansible_inventory_executable() -> Optional[str]:
    return ansible_executable("ansible-inventory")


def _env() -> Dict[str, str]:
    env = dict(os.environ)
    # A source Ansible cannot parse is otherwise a warning and an empty inventory.
    env.update(ANSIBLE_INVENTORY_UNPARSED_FAILED="1", ANSIBLE_INVENTORY_ANY_UNPARSED_IS_FAILED="1",
               ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0", ANSIBLE_RETRY_FILES_ENABLED="0")
    cfg = Path.cwd() / "ansible.cfg"
    if "ANSIBLE_CONFIG" not in env and cfg.is_file():
        env["ANSIBLE_CONFIG"] = str(cfg)  # the project's ansible.cfg, though we run from elsewhere
    return env


def _run(argv: List[str], what: str) -> "subprocess.CompletedProcess[str]":
    # Not the caller's directory: Ansible would add group_vars/ found there as playbook vars.
    with tempfile.TemporaryDirectory(prefix="edgekit-ansible-") as cwd:
        try:
            return subprocess.run(argv, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=TIMEOUT_S,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise ConfigError(f"{what}: {Path(argv[0]).name} did not finish in {TIMEOUT_S} s") from None
        except OSError as exc:
            raise ConfigError(f"{what}: cannot run {argv[0]}: {exc.strerror}") from None


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


def _failures(stderr: str) -> List[Tuple[str, str]]:
    """(plugin, message) for each plugin that failed on a source: the message is the text under
    '<<< caused by >>>' (it can span lines), else the warning's own line."""
    found = []
    for block in re.split(r"^(?=\[WARNING\]: Failed to parse inventory with )", stderr, flags=re.M)[1:]:
        m = _FAILED.match(block)
        if not m:
            continue
        cause = re.search(r"<<< caused by >>>\s*(.*?)\s*(?:^Origin: |\Z|^\[(?:WARNING|ERROR)\])", block, re.S | re.M)
        found.append((m.group(1), cause.group(1) if cause else m.group(2)))
    return found


def _tidy(msg: str) -> str:
    msg = re.sub(r"^Failed to parse inventory: ", "", msg)
    return re.sub(r"<class '(?:[\w.]*\.)?_?(?:AnsibleTagged)?(\w+)'>", lambda m: m.group(1).lower(), msg)


def ansible_error(stderr: str, sources: Sequence[Path]) -> str:
    """The one failure that explains why Ansible could not read the sources. Ansible reports one
    per plugin it tried; the one matching the file's shape is kept (auto for a plugin config, yaml
    for YAML, ini otherwise)."""
    failures = _failures(stderr)
    if failures:
        wanted = {_shape(s) for s in sources}
        useful = [f for f in failures if f[0] in wanted and not (f[0] != "auto" and any(n in f[1] for n in _NOISE))]
        useful = useful or [f for f in failures if not any(n in f[1] for n in _NOISE)] or failures
        msg = _tidy(useful[0][1])
        origin = re.search(r"^Origin: (\S+?:\d+)(?::\d+)?\s*$", stderr, re.M)
        return _one_line(msg + (f" ({origin.group(1)})" if origin and origin.group(1) not in msg else ""))
    errors = re.findall(r"^\[ERROR\]: (.*)$", stderr, re.M)
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    return _one_line(errors[0] if errors else (lines[-1] if lines else "failed without a message"))


def _shape(source: Path) -> str:
    """Which of Ansible's plugins a source is meant for: auto (a plugin config), yaml or ini."""
    text = None
    if source.is_file() and (source.suffix in YAML_EXTENSIONS or not source.suffix):
        try:
            text = source.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            pass
    data = yaml_mapping(text, source) if text is not None else None
    if data is not None:
        return "auto" if "plugin" in data else "yaml"
    return "yaml" if source.suffix in YAML_EXTENSIONS else "ini"


def _builtin_location(sources: Sequence[Path]) -> str:
    """Ansible 2.19 names the file but not the line of an INI or YAML mistake; the built-in reader
    usually finds the same mistake, with its line."""
    from .inventory import load_inventory

    try:
        load_inventory(list(sources), engine="builtin")
    except ConfigError as exc:
        m = re.match(r"(.+?:\d+): ", exc.message)
        if m and any(m.group(1).startswith(str(s)) for s in sources):
            return m.group(1)
    return ""


def _inventory_argv(exe: str, sources: Sequence[Path]) -> List[str]:
    argv = [exe]
    for s in sources:
        argv += ["-i", str(s.resolve())]
    return argv


def run_ansible_inventory(sources: Sequence[Path]) -> Dict[str, Any]:
    exe = ansible_inventory_executable()
    where = ", ".join(map(str, sources))
    if exe is None:
        raise ConfigError(f"{where}: ansible-inventory is not installed", hint="pip install 'edgekit[ansible]'")
    proc = _run(_inventory_argv(exe, sources) + ["--list"], where)
    if proc.returncode != 0:
        raise ConfigError(f"{_builtin_location(sources) or where}: ansible-inventory: {ansible_error(proc.stderr, sources)}")
    skipped = _SKIPPED.search(proc.stderr)
    if skipped:  # Ansible warns and drops part of the inventory; a typo must not shrink the fleet
        raise ConfigError(f"{_builtin_location(sources) or where}: ansible-inventory: {_one_line(skipped.group(1))}",
                          hint="fix the inventory: only hosts, vars and children belong in a YAML group")
    try:
        out = json.loads(proc.stdout)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{where}: ansible-inventory printed no JSON ({exc.msg})") from None
    if not isinstance(out, dict):
        raise ConfigError(f"{where}: ansible-inventory printed {type(out).__name__}, not an inventory")
    return out


def inventory_from_json(out: Dict[str, Any]) -> Tuple[InventoryData, Dict[str, Dict[str, Any]]]:
    """Groups, hosts and each host's merged variables from ``ansible-inventory --list`` output."""
    data = InventoryData()
    hostvars = (out.get("_meta") or {}).get("hostvars") or {}
    for host in hostvars:
        data.hosts.setdefault(str(host), {})
    groups = {name: body or {} for name, body in out.items() if name != "_meta" and isinstance(body, dict)}
    for name, body in groups.items():
        data.add_group(name)
        for host in body.get("hosts") or []:
            data.hosts.setdefault(str(host), {})
            data.groups[name].add_host(str(host))
    for name, body in groups.items():
        for child in body.get("children") or []:
            data.add_group(child)
            data.add_child(name, child, where="ansible-inventory: ")
    data.reconcile()
    # Inventory order: each group's own hosts, then its children's, from 'all' down (the JSON's
    # hostvars are sorted by name).
    order: List[str] = []
    placed: set = set()
    seen: set = set()

    def walk(group: str) -> None:
        if group in seen:
            return
        seen.add(group)
        for h in data.groups[group].hosts:
            if h not in placed:
                placed.add(h)
                order.append(h)
        for child in data.groups[group].children:
            walk(child)

    walk("all")
    data.hosts = {h: data.hosts[h] for h in order + [h for h in data.hosts if h not in placed]}
    return data, {str(h): dict(v or {}) for h, v in hostvars.items()}


def _template_hosts(sources: Sequence[Path], resolved: Dict[str, Dict[str, Any]]) -> None:
    """Evaluate, with Ansible, the variables edgekit uses that are templates."""
    todo = {h: sorted(k for k in USED_VARS if is_template(v.get(k))) for h, v in resolved.items()}
    todo = {h: keys for h, keys in todo.items() if keys}
    if not todo:
        return
    where = ", ".join(map(str, sources))
    exe = ansible_executable("ansible")
    if exe is None:
        raise ConfigError(f"{where}: templated inventory variables need the 'ansible' program (ansible-core)")
    keys = sorted({k for ks in todo.values() for k in ks})
    expr = "{{ {" + ", ".join(f"'{k}': ({k} | default(none))" for k in keys) + "} }}"
    with tempfile.NamedTemporaryFile("w", suffix=".limit", delete=False) as f:
        f.write("\n".join(todo) + "\n")  # a limit file: host names need no pattern escaping
    try:
        proc = _run(_inventory_argv(exe, sources) + ["all", "--limit", f"@{f.name}", "-m", "ansible.builtin.debug",
                                                      "-a", json.dumps({"msg": expr})], where)
    finally:
        os.unlink(f.name)
    env_out = proc.stdout
    for m in re.finditer(r"^(.+?) \| (SUCCESS|FAILED!?) => ", env_out, re.M):
        host, status = m.group(1), m.group(2)
        try:
            body, _ = json.JSONDecoder().raw_decode(env_out, m.end())
        except json.JSONDecodeError:
            continue
        if host not in todo:
            continue
        if status != "SUCCESS" or not isinstance(body.get("msg"), dict):
            raise ConfigError(f"{where}: host '{host}': Ansible could not evaluate its templates: "
                              f"{_one_line(str(body.get('msg', body)))}")
        for k in todo.pop(host):
            resolved[host][k] = body["msg"].get(k)
    if todo:
        raise ConfigError(f"{where}: host '{next(iter(todo))}': Ansible could not evaluate its templates: "
                          f"{ansible_error(proc.stderr, sources) if proc.stderr.strip() else 'no result'}")


class AnsibleInventory(Inventory):
    def device(self, host: str) -> Any:
        return device_from_vars(self.where, host, self.variables(host), self.device_groups(host), templated_ok=True)


def load_with_ansible(sources: Sequence[Path]) -> Inventory:
    data, resolved = inventory_from_json(run_ansible_inventory(sources))
    _template_hosts(sources, resolved)
    return AnsibleInventory(sources, data, "ansible", resolved)
