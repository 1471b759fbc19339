"""Ansible inventories (INI or YAML) as edgekit devices, without Ansible installed.

What is read: groups, ``children``, host ranges (``pi-[01:16]``), ``[group:vars]`` / ``vars:``,
inline host vars, and these variables::

    ansible_host / ansible_ssh_host            -> device.host (default: the inventory name)
    ansible_port / ansible_ssh_port            -> device.port
    ansible_user / ansible_ssh_user            -> device.user
    ansible_ssh_private_key_file               -> device.identity_file
    ansible_python_interpreter                 -> device.python ("auto*" keeps python3)
    ansible_connection=local                   -> transport "local"
    edgekit_target                             -> device.target (required for hosts you deploy to)
    edgekit_path                               -> device.path

Variables merge as in Ansible: ``all`` < parent groups < child groups (siblings by name) < host.
Passwords (ansible_password, ansible_ssh_pass) are refused: edgekit never stores one.
"""
from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Set

from ..errors import ConfigError

PASSWORD_VARS = ("ansible_password", "ansible_ssh_pass", "ansible_ssh_password")
AUTO_PYTHON = ("auto", "auto_legacy", "auto_silent", "auto_legacy_silent")


@dataclass
class Group:
    name: str
    hosts: List[str] = field(default_factory=list)
    children: List[str] = field(default_factory=list)
    vars: Dict[str, Any] = field(default_factory=dict)


@dataclass
class Inventory:
    path: Path
    groups: Dict[str, Group] = field(default_factory=dict)
    host_vars: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    """Every host, in file order, with its own (inline / host-level) vars."""

    def group(self, name: str) -> Group:
        if name not in self.groups:
            self.groups[name] = Group(name)
        return self.groups[name]

    def add_host(self, group: str, host: str, hvars: Dict[str, Any]) -> None:
        self.host_vars.setdefault(host, {}).update(hvars)
        g = self.group(group)
        if host not in g.hosts:
            g.hosts.append(host)

    # -- queries --------------------------------------------------------------------------------
    def _parents(self) -> Dict[str, Set[str]]:
        parents: Dict[str, Set[str]] = {}
        for g in self.groups.values():
            for c in g.children:
                parents.setdefault(c, set()).add(g.name)
        return parents

    def _depth(self, name: str, parents: Dict[str, Set[str]], seen: Optional[Set[str]] = None) -> int:
        if name == "all":
            return 0
        seen = (seen or set()) | {name}
        ps = [p for p in parents.get(name, set()) if p not in seen]
        return 1 + max((self._depth(p, parents, seen) for p in ps), default=0)

    def groups_of(self, host: str) -> List[str]:
        """Every group holding ``host``, directly or through children, ``all`` included."""
        parents = self._parents()
        found: Set[str] = set()
        todo = [g.name for g in self.groups.values() if host in g.hosts]
        while todo:
            g = todo.pop()
            if g not in found:
                found.add(g)
                todo.extend(parents.get(g, set()))
        found.add("all")
        return sorted(found, key=lambda g: (self._depth(g, parents), g))

    def hosts_in(self, group: str) -> List[str]:
        if group == "all":
            return list(self.host_vars)
        if group not in self.groups:
            known = ", ".join(sorted(g for g in self.groups if g not in ("all", "ungrouped"))) or "none"
            raise ConfigError(f"{self.path}: no group named '{group}' (groups: {known})")
        found: List[str] = []
        todo, seen = [group], set()
        while todo:
            g = self.groups.get(todo.pop(0))
            if g is None or g.name in seen:
                continue
            seen.add(g.name)
            found += [h for h in g.hosts if h not in found]
            todo += g.children
        return [h for h in self.host_vars if h in found]  # file order

    def variables(self, host: str) -> Dict[str, Any]:
        merged: Dict[str, Any] = {}
        for g in self.groups_of(host):
            merged.update(self.groups[g].vars if g in self.groups else {})
        merged.update(self.host_vars.get(host, {}))
        return merged

    def device(self, host: str) -> "Any":
        """The host as a DeviceSpec (edgekit.config), validated the same way as edgekit.toml's."""
        from pydantic import ValidationError

        from ..config import DeviceSpec

        v = self.variables(host)
        for key in PASSWORD_VARS:
            if key in v:
                raise ConfigError(f"{self.path}: host '{host}' sets {key}; edgekit never stores passwords",
                                  hint="use an SSH key (ansible_ssh_private_key_file or ssh-agent)")
        if "edgekit_target" not in v:
            raise ConfigError(f"{self.path}: host '{host}' has no edgekit_target (set it on the host or a group)")
        python = str(v.get("ansible_python_interpreter", "python3"))
        spec: Dict[str, Any] = {
            "name": host,
            "target": str(v["edgekit_target"]),
            "transport": "local" if v.get("ansible_connection") == "local" else "ssh",
            "host": str(v.get("ansible_host", v.get("ansible_ssh_host", host))),
            "python": "python3" if python in AUTO_PYTHON else python,
            "groups": [g for g in self.groups_of(host) if g not in ("all", "ungrouped")],
        }
        for key, names in (("port", ("ansible_port", "ansible_ssh_port")), ("user", ("ansible_user", "ansible_ssh_user")),
                           ("identity_file", ("ansible_ssh_private_key_file",)), ("path", ("edgekit_path",))):
            for n in names:
                if n in v:
                    spec[key] = v[n]
                    break
        try:
            return DeviceSpec.model_validate(spec)
        except ValidationError as exc:
            err = exc.errors()[0]
            raise ConfigError(f"{self.path}: host '{host}': field '{'.'.join(map(str, err['loc']))}': {err['msg']}") from None

    def devices(self, group: Optional[str] = None) -> List[Any]:
        return [self.device(h) for h in (self.hosts_in(group) if group else list(self.host_vars))]


# ----------------------------------------------------------------------------------------------
# Parsing
# ----------------------------------------------------------------------------------------------
_RANGE = re.compile(r"\[([0-9a-zA-Z]+):([0-9a-zA-Z]+)(?::([0-9]+))?\]")


def expand_hosts(pattern: str) -> List[str]:
    """Ansible host ranges: ``pi-[01:03]`` -> pi-01, pi-02, pi-03; ``[a:c]`` letters; ``[0:10:5]`` stride."""
    m = _RANGE.search(pattern)
    if not m:
        return [pattern]
    start, end, step = m.group(1), m.group(2), int(m.group(3) or 1)
    head, tail = pattern[: m.start()], pattern[m.end():]
    if start.isdigit() and end.isdigit():
        width = len(start) if start.startswith("0") and len(start) > 1 else 0
        items = [str(i).zfill(width) for i in range(int(start), int(end) + 1, step)]
    elif len(start) == 1 and len(end) == 1 and start.isalpha() and end.isalpha():
        items = [chr(c) for c in range(ord(start), ord(end) + 1, step)]
    else:
        raise ConfigError(f"host range '{m.group(0)}' in '{pattern}' is not understood")
    return [h for i in items for h in expand_hosts(head + i + tail)]


def _ini_value(text: str) -> Any:
    """Inline INI values are literals in Ansible (ports are ints); keep everything else a string."""
    if re.fullmatch(r"-?[0-9]+", text):
        return int(text)
    return text


def parse_ini(text: str, path: Path) -> Inventory:
    """INI inventories are not configparser files (a host line is ``name k=v k=v``), so read lines."""
    inv = Inventory(path)
    inv.group("all")
    section, kind = "ungrouped", "hosts"
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            name, _, suffix = line[1:-1].partition(":")
            if suffix not in ("", "vars", "children"):
                raise ConfigError(f"{path}:{lineno}: unknown section suffix ':{suffix}'")
            section, kind = name.strip(), suffix or "hosts"
            inv.group(section)
            continue
        try:
            tokens = shlex.split(line, comments=True)
        except ValueError as exc:
            raise ConfigError(f"{path}:{lineno}: {exc}") from None
        if kind == "vars":
            key, eq, value = line.partition("=")
            if not eq:
                raise ConfigError(f"{path}:{lineno}: expected key=value in [{section}:vars]")
            inv.group(section).vars[key.strip()] = " ".join(shlex.split(value, comments=True))
        elif kind == "children":
            inv.group(tokens[0])
            if tokens[0] not in inv.group(section).children:
                inv.group(section).children.append(tokens[0])
        else:
            hvars: Dict[str, Any] = {}
            for tok in tokens[1:]:
                key, eq, value = tok.partition("=")
                if not eq:
                    raise ConfigError(f"{path}:{lineno}: expected key=value after the host name, got '{tok}'")
                hvars[key] = _ini_value(value)
            for host in expand_hosts(tokens[0]):
                inv.add_host(section, host, hvars)
    return inv


def parse_yaml(text: str, path: Path) -> Inventory:
    import yaml

    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: malformed YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of groups at the top level")
    inv = Inventory(path)
    inv.group("all")

    def walk(name: str, body: Any, trail: Iterable[str]) -> None:
        if name in trail:
            raise ConfigError(f"{path}: group '{name}' contains itself")
        group = inv.group(name)
        body = body or {}
        if not isinstance(body, dict):
            raise ConfigError(f"{path}: group '{name}' must be a mapping (hosts/vars/children)")
        unknown = set(body) - {"hosts", "vars", "children"}
        if unknown:
            raise ConfigError(f"{path}: group '{name}': unknown key(s) {sorted(unknown)}")
        group.vars.update(body.get("vars") or {})
        for pattern, hvars in (body.get("hosts") or {}).items():
            for host in expand_hosts(str(pattern)):
                inv.add_host(name, host, dict(hvars or {}))
        for child, child_body in (body.get("children") or {}).items():
            if child not in group.children:
                group.children.append(child)
            walk(child, child_body, [*trail, name])

    for name, body in data.items():
        walk(str(name), body, [])
    return inv


def load_inventory(path: Path) -> Inventory:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read inventory: {exc.strerror}") from None
    if path.suffix in (".yml", ".yaml") or text.lstrip().startswith(("all:", "---")):
        return parse_yaml(text, path)
    return parse_ini(text, path)
