"""Ansible inventories as edgekit devices, read as Ansible reads them.

Two engines (``EDGEKIT_INVENTORY_ENGINE`` = auto | ansible | builtin; auto by default):

- **ansible**: when ansible-core is installed (``edgekit[ansible]``), ``ansible-inventory -i SRC --list``
  runs in a subprocess and its JSON is read (inventory_ansible.py): every source Ansible reads
  (directories, plugin configs, scripts), its vars plugins, precedence and templating;
- **builtin**: INI and YAML files and directories of them, with group_vars/ and host_vars/ beside them
  (inventory_parse.py), merged in Ansible's order.

Both give the same variables per host; this module maps them onto a device::

    ansible_host / ansible_ssh_host            -> device.host (default: the inventory name)
    ansible_port / ansible_ssh_port            -> device.port
    ansible_user / ansible_ssh_user            -> device.user
    ansible_private_key_file / ansible_ssh_private_key_file -> device.identity_file
    ansible_python_interpreter                 -> device.python ("auto*" keeps python3)
    ansible_connection=local                   -> transport "local"
    edgekit_target                             -> device.target (required for hosts you deploy to)
    edgekit_path                               -> device.path

Where a host has both names, the ``ansible_ssh_*`` one wins wherever each was set: Ansible's ssh
connection lists the legacy name last among its variables, and the last one defined wins.
Passwords (ansible_password, ansible_ssh_pass) are refused: edgekit never stores one.
"""
from __future__ import annotations

import hashlib
import os
import re
import unicodedata
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

from ..errors import ConfigError
from .inventory_parse import (DIR_SKIP_EXTS, DIR_SKIP_NAMES, YAML_EXTENSIONS, Group, InventoryData, expand_hosts,
                              load_yaml, parse_ini, parse_yaml, read_vars_file, vars_files, yaml_mapping)

__all__ = ["Inventory", "load_inventory", "expand_hosts", "safe_filename", "inventory_engine", "ENGINE_ENV", "Group"]

ENGINE_ENV = "EDGEKIT_INVENTORY_ENGINE"
ENGINES = ("auto", "ansible", "builtin")
PASSWORD_VARS = ("ansible_password", "ansible_ssh_pass", "ansible_ssh_password")
AUTO_PYTHON = ("auto", "auto_legacy", "auto_silent", "auto_legacy_silent")
# (device field, inventory names with the winning one last, as Ansible's ssh connection lists them)
CONNECTION_VARS = (("host", ("ansible_host", "ansible_ssh_host")), ("port", ("ansible_port", "ansible_ssh_port")),
                   ("user", ("ansible_user", "ansible_ssh_user")),
                   ("identity_file", ("ansible_private_key_file", "ansible_ssh_private_key_file")))
EDGEKIT_VARS = ("edgekit_target", "edgekit_path", "ansible_python_interpreter", "ansible_connection")
USED_VARS = tuple(n for _, names in CONNECTION_VARS for n in names) + EDGEKIT_VARS
_TEMPLATE = re.compile(r"\{\{|\{%")
Sources = Union[Path, str, Sequence[Union[Path, str]]]


def safe_filename(name: str, max_len: int = 80) -> str:
    """A device name as a file name component: ASCII letters, digits, '.', '_' and '-' only. Where
    anything had to change, a hash of the real name keeps two names from sharing a file."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    clean = re.sub(r"[^A-Za-z0-9._-]+", "_", ascii_name).strip("._-")[:max_len] or "device"
    if clean == name:
        return clean
    return f"{clean}-{hashlib.sha256(name.encode('utf-8', 'surrogatepass')).hexdigest()[:8]}"


def is_template(value: Any) -> bool:
    return isinstance(value, str) and _TEMPLATE.search(value) is not None


class Inventory:
    """Groups and hosts from one or more inventory sources, and each host as a device."""

    def __init__(self, sources: Sequence[Path], data: InventoryData, engine: str,
                 resolved: Optional[Dict[str, Dict[str, Any]]] = None) -> None:
        self.sources = list(sources)
        self.data = data
        self.engine = engine
        self.resolved = resolved
        """ansible engine: each host's variables as ansible-inventory merged them."""
        self._depths: Dict[str, int] = {}
        self._files: Dict[Path, Dict[str, Any]] = {}
        self._direct: Dict[str, List[str]] = {}
        for g in data.groups.values():
            for h in g.hosts:
                self._direct.setdefault(h, []).append(g.name)
        try:
            for g in data.groups:
                self.depth(g)
        except RecursionError:
            raise ConfigError(f"{self.where}: groups are nested too deeply") from None

    @property
    def path(self) -> Path:
        return self.sources[0]

    @property
    def where(self) -> str:
        return ", ".join(map(str, self.sources))

    @property
    def groups(self) -> Dict[str, Group]:
        return self.data.groups

    @property
    def host_vars(self) -> Dict[str, Dict[str, Any]]:
        """Every host, in the order first seen, with its inline vars."""
        return self.data.hosts

    # -- structure ------------------------------------------------------------------------------
    def depth(self, group: str) -> int:
        """The longest chain of parents up to 'all' (Ansible orders group vars by it)."""
        if group not in self._depths:
            parents = self.groups[group].parents if group != "all" else []
            self._depths[group] = 1 + max((self.depth(p) for p in parents), default=-1)
        return self._depths[group]

    def _order(self, group: str) -> tuple:  # type: ignore[type-arg]
        return (self.depth(group), self.groups[group].priority, group)

    def groups_of(self, host: str) -> List[str]:
        """Every group holding ``host``, directly or through children, ``all`` included, in the
        order Ansible applies their vars (depth, ansible_group_priority, name)."""
        found = {"all"}
        todo = list(self._direct.get(host, []))
        while todo:
            g = todo.pop()
            if g not in found:
                found.add(g)
                todo.extend(self.groups[g].parents)
        return sorted(found, key=self._order)

    def hosts_in(self, group: str) -> List[str]:
        if group == "all":
            return list(self.host_vars)
        if group not in self.groups:
            known = ", ".join(sorted(g for g in self.groups if g != "all")) or "none"
            raise ConfigError(f"{self.where}: no group named '{group}' (groups: {known})")
        found: set = set()
        todo, seen = [group], set()
        while todo:
            g = self.groups[todo.pop()]
            if g.name not in seen:
                seen.add(g.name)
                found.update(g.hosts)
                todo.extend(g.children)
        return [h for h in self.host_vars if h in found]  # inventory order

    # -- variables ------------------------------------------------------------------------------
    def _vars_dirs(self) -> List[Path]:
        return [s if s.is_dir() else s.parent for s in self.sources]

    def _file_vars(self, d: Path, kind: str, name: str) -> Dict[str, Any]:
        merged: Dict[str, Any] = {}
        if name.startswith("/") or not (d / kind).is_dir():  # Ansible skips chroot-style names
            return merged
        for f in vars_files(d / kind, name):
            if f not in self._files:
                self._files[f] = read_vars_file(f)
            merged.update(self._files[f])
        return merged

    def variables(self, host: str) -> Dict[str, Any]:
        """The host's variables, merged in Ansible's order: 'all' inline < other groups inline (by
        depth, priority, name) < group_vars/all < group_vars/<group> < host inline < host_vars/<host>."""
        if self.resolved is not None:
            return dict(self.resolved.get(host, {}))
        groups = [g for g in self.groups_of(host) if g != "all"]
        merged = dict(self.groups["all"].vars)
        for g in groups:
            merged.update(self.groups[g].vars)
        dirs = self._vars_dirs()
        for d in dirs:
            merged.update(self._file_vars(d, "group_vars", "all"))
        for d in dirs:  # each source's directory in turn, its groups in order
            for g in groups:
                merged.update(self._file_vars(d, "group_vars", g))
        merged.update(self.host_vars.get(host, {}))
        for d in dirs:
            merged.update(self._file_vars(d, "host_vars", host))
        return merged

    # -- devices --------------------------------------------------------------------------------
    def device(self, host: str) -> Any:
        """The host as a DeviceSpec (edgekit.config), validated the same way as edgekit.toml's."""
        return device_from_vars(self.where, host, self.variables(host), self.device_groups(host), templated_ok=False)

    def device_groups(self, host: str) -> List[str]:
        """The device's groups: every group holding it but 'all', shallowest first ('ungrouped' too,
        so that ``--group ungrouped`` selects hosts in no other group)."""
        return sorted((g for g in self.groups_of(host) if g != "all"), key=lambda g: (self.depth(g), g))

    def devices(self, group: Optional[str] = None) -> List[Any]:
        return [self.device(h) for h in (self.hosts_in(group) if group else list(self.host_vars))]


def _last_defined(v: Dict[str, Any], names: Sequence[str]) -> Any:
    value = None
    for n in names:  # Ansible: the last name that is defined and not null wins
        if v.get(n) is not None:
            value = v[n]
    return value


def device_from_vars(where: str, host: str, v: Dict[str, Any], groups: List[str], templated_ok: bool) -> Any:
    from pydantic import ValidationError

    from ..config import DeviceSpec, first_error

    at = f"{where}: host '{host}'"
    for key in PASSWORD_VARS:
        if key in v:
            raise ConfigError(f"{at} sets {key}; edgekit never stores passwords",
                              hint="use an SSH key (ansible_ssh_private_key_file or ssh-agent)")
    for key in USED_VARS:
        if not templated_ok and is_template(v.get(key)):
            raise ConfigError(f"{at}: {key} is a template ({v[key]!r}); the built-in inventory reader does not "
                              "evaluate templates", hint="pip install 'edgekit[ansible]' to read it through Ansible")
    if v.get("edgekit_target") is None:
        raise ConfigError(f"{at} has no edgekit_target (set it on the host, a group, or in group_vars/)")
    python = _text(v.get("ansible_python_interpreter", "python3"))
    spec: Dict[str, Any] = {
        "name": host,
        "target": _text(v["edgekit_target"]),
        "transport": _transport(at, v.get("ansible_connection")),
        "host": host,
        "python": "python3" if python in AUTO_PYTHON else python,
        "groups": groups,
    }
    for key, names in CONNECTION_VARS:
        value = _last_defined(v, names)
        if value is not None:
            spec[key] = _port(at, value) if key == "port" else _text(value)
    if v.get("edgekit_path") is not None:
        spec["path"] = _text(v["edgekit_path"])
    try:
        return DeviceSpec.model_validate(spec)
    except ValidationError as exc:
        raise ConfigError(f"{at}: {first_error(exc)}") from None


def _text(value: Any) -> str:
    """Scalars as Ansible's string options take them: ``ansible_user: 1000`` is the user "1000"."""
    if isinstance(value, (dict, list)):
        raise ConfigError(f"expected a single value, got {type(value).__name__} {value!r}")
    return str(value)


def _port(at: str, value: Any) -> int:
    if isinstance(value, bool) or not re.fullmatch(r"\s*[0-9]+\s*", str(value)) or not 0 < int(value) < 65536:
        raise ConfigError(f"{at}: the SSH port must be a number from 1 to 65535, got {value!r}")
    return int(value)


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------
def inventory_engine(engine: Optional[str] = None) -> str:
    """'ansible' or 'builtin': the one asked for (argument, else $EDGEKIT_INVENTORY_ENGINE), where
    'auto' (the default) means ansible when ansible-inventory is installed."""
    from .inventory_ansible import ansible_inventory_executable

    choice = (engine or os.environ.get(ENGINE_ENV) or "auto").strip().lower()
    if choice not in ENGINES:
        raise ConfigError(f"{ENGINE_ENV}={choice!r}: expected one of {', '.join(ENGINES)}")
    if choice == "builtin":
        return "builtin"
    if ansible_inventory_executable() is None:
        if choice == "ansible":
            raise ConfigError(f"{ENGINE_ENV}=ansible, but ansible-inventory is not installed",
                              hint="pip install 'edgekit[ansible]' (ansible-core)")
        return "builtin"
    return "ansible"


def _as_list(sources: Sources) -> List[Path]:
    items = [sources] if isinstance(sources, (str, Path)) else list(sources)
    if not items:
        raise ConfigError("no inventory source given")
    return [Path(p).expanduser() for p in items]


def load_inventory(sources: Sources, engine: Optional[str] = None) -> Inventory:
    """One inventory from one or more sources (files or directories), as ``ansible -i A -i B``."""
    paths = _as_list(sources)
    for p in paths:
        if not p.exists():
            raise ConfigError(f"{p}: cannot read inventory: no such file or directory")
    if inventory_engine(engine) == "ansible":
        from .inventory_ansible import load_with_ansible

        return load_with_ansible(paths)
    data = InventoryData()
    try:
        for p in paths:
            _read_source(p, data)
    except RecursionError:
        raise ConfigError(f"{', '.join(map(str, paths))}: the inventory is nested too deeply") from None
    data.reconcile()
    return Inventory(paths, data, "builtin")


def _read_source(path: Path, data: InventoryData) -> None:
    if path.is_dir():
        try:
            names = sorted(os.listdir(path))
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read inventory directory: {exc.strerror}") from None
        for name in names:
            if name.startswith(".") or name in DIR_SKIP_NAMES or name.endswith(DIR_SKIP_EXTS):
                continue
            _read_source(path / name, data)
        return
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read inventory: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 text") from None
    if text.startswith("#!"):
        raise ConfigError(f"{path}: a dynamic inventory script needs Ansible itself",
                          hint="pip install 'edgekit[ansible]' (ansible-core)")
    if path.suffix == ".toml":
        raise ConfigError(f"{path}: TOML inventories need Ansible itself", hint="pip install 'edgekit[ansible]' (ansible-core)")
    if path.suffix in YAML_EXTENSIONS or not path.suffix:
        parsed = yaml_mapping(text, path)
        if parsed is not None:
            parse_yaml(parsed, path, data)
            return
        if path.suffix in YAML_EXTENSIONS and not _ini_shaped(text):
            parse_yaml(load_yaml(text, path), path, data)  # raises with the YAML's own problem
    try:
        parse_ini(text, path, data)
    except ConfigError:
        if not path.suffix and _yaml_keyed(text) and not _ini_shaped(text):
            load_yaml(text, path)  # YAML with a mistake: say what the YAML parser says
        raise


def _yaml_keyed(text: str) -> bool:
    return bool(re.search(r"^[^\s#;\[][^=\n]*:[ \t]*(#.*)?$", text, re.M))


def _ini_shaped(text: str) -> bool:
    return bool(re.search(r"^\s*\[[^\]]+\]\s*(#.*)?$", text, re.M))


# Ansible connection plugins that reach a host the way edgekit's ssh transport does.
SSH_CONNECTIONS = (None, "ssh", "paramiko", "paramiko_ssh", "smart", "ansible.builtin.ssh", "ansible.builtin.paramiko_ssh")


def _transport(at: str, connection: object) -> str:
    """The edgekit transport for an ansible_connection: ssh-like ones are ssh, a registered transport
    name is itself, anything else (docker, winrm, ...) is refused rather than tried over SSH."""
    from . import names

    if connection in SSH_CONNECTIONS:
        return "ssh"
    if isinstance(connection, str) and connection.rsplit(".", 1)[-1] in names():
        return connection.rsplit(".", 1)[-1]
    raise ConfigError(f"{at}: ansible_connection={str(connection)[:40]!r} has no edgekit transport",
                      hint=f"edgekit reaches devices over: {', '.join(names())}")

