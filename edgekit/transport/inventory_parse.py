"""The built-in reader of Ansible INI and YAML inventories (used when ansible-core is not installed).

This is an independent implementation of the behaviour Ansible documents for its ``ini`` and
``yaml`` inventory plugins and its ``host_group_vars`` vars plugin; tests/test_inventory_diff.py
checks it host by host against the real ``ansible-inventory``. Nothing here is copied from Ansible
(GPL-3.0): edgekit is Apache-2.0.

Where Ansible only warns and skips (a YAML group key that is neither ``hosts``, ``vars`` nor
``children``; a group that is not a mapping), this reader refuses: a typo there silently drops hosts.
"""
from __future__ import annotations

import ast
import json
import re
import shlex
import string
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Set, Tuple

from ..errors import ConfigError

VARS_EXTENSIONS = ("", ".yml", ".yaml", ".json")
YAML_EXTENSIONS = (".yml", ".yaml", ".json")
# A directory given as the inventory: Ansible skips these names and extensions (INVENTORY_IGNORE_EXTS).
DIR_SKIP_NAMES = ("host_vars", "group_vars", "vars_plugins")
DIR_SKIP_EXTS = (".pyc", ".pyo", ".swp", ".bak", "~", ".rpm", ".md", ".txt", ".rst", ".orig", ".cfg", ".retry")


@dataclass
class Group:
    name: str
    hosts: List[str] = field(default_factory=list)
    children: List[str] = field(default_factory=list)
    parents: List[str] = field(default_factory=list)
    vars: Dict[str, Any] = field(default_factory=dict)
    priority: int = 1
    members: Set[str] = field(default_factory=set, repr=False)
    """The hosts, as a set (thousands of hosts are read in linear time)."""

    def add_host(self, host: str) -> None:
        if host not in self.members:
            self.members.add(host)
            self.hosts.append(host)

    def remove_host(self, host: str) -> None:
        if host in self.members:
            self.members.discard(host)
            self.hosts.remove(host)


@dataclass
class InventoryData:
    """Groups and hosts as Ansible's inventory holds them after parsing: inline vars only."""
    groups: Dict[str, Group] = field(default_factory=dict)
    hosts: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    """Every host, in the order first seen, with its inline vars."""

    def __post_init__(self) -> None:
        self.add_group("all")
        self.add_group("ungrouped")
        self.add_child("all", "ungrouped", where="")

    def add_group(self, name: str) -> Group:
        if name not in self.groups:
            self.groups[name] = Group(name)
        return self.groups[name]

    def add_host(self, host: str, group: str, port: Optional[int]) -> None:
        if host not in self.hosts:
            # As in Ansible, a host:port only counts where the host is first defined.
            self.hosts[host] = {"ansible_port": port} if port else {}
        self.groups[group].add_host(host)

    def add_child(self, parent: str, child: str, where: str) -> None:
        if parent == child or child in self.ancestors(parent):
            raise ConfigError(f"{where}group '{child}' is its own ancestor (a loop of children)")
        p, c = self.groups[parent], self.groups[child]
        if child not in p.children:
            p.children.append(child)
        if parent not in c.parents:
            c.parents.append(parent)

    def set_group_var(self, group: str, key: str, value: Any, where: str) -> None:
        if key == "ansible_group_priority":
            try:
                self.groups[group].priority = int(value)
            except (TypeError, ValueError):
                raise ConfigError(f"{where}group '{group}': ansible_group_priority must be an integer, got {value!r}") from None
        else:
            self.groups[group].vars[key] = value

    def ancestors(self, group: str) -> Set[str]:
        found: Set[str] = set()
        todo = list(self.groups[group].parents)
        while todo:
            g = todo.pop()
            if g not in found:
                found.add(g)
                todo.extend(self.groups[g].parents)
        return found

    def reconcile(self) -> None:
        """What Ansible does once every source is parsed: every group descends from 'all', and
        'ungrouped' holds exactly the hosts that are in no other group."""
        for g in list(self.groups.values()):
            if g.name != "all" and not g.parents:
                self.add_child("all", g.name, where="")
        ungrouped = self.groups["ungrouped"]
        grouped = {h for g in self.groups.values() if g.name not in ("all", "ungrouped") for h in g.hosts}
        for host in self.hosts:
            if host in grouped:
                ungrouped.remove_host(host)
            else:
                ungrouped.add_host(host)


# ----------------------------------------------------------------------------------------------
# Host patterns: host, host:port, [ipv6]:port, ranges such as pi[01:16] or r[a:c]
# ----------------------------------------------------------------------------------------------
_RANGE_IN_LABEL = re.compile(r"\[(?:[a-z]:[a-z]|[0-9]+:[0-9]+)(?::[0-9]+)?\]", re.I)
_RANGE_IN_NUMBER = re.compile(r"\[[0-9]+:[0-9]+(?::[0-9]+)?\]")
_LABEL = re.compile(r"\w(?:[\w-]*[^\W_])?|\w")


def _is_ipv4(text: str) -> bool:
    parts = _RANGE_IN_NUMBER.sub("0", text).split(".")
    return len(parts) == 4 and all(p.isdigit() and p.isascii() and len(p) <= 3 and int(p) <= 255 for p in parts)


def _is_hostname(text: str) -> bool:
    plain = _RANGE_IN_LABEL.sub("0", text)
    return all(_LABEL.fullmatch(label) is not None for label in plain.split("."))


def _is_ipv6(text: str) -> bool:
    import ipaddress

    plain = re.sub(r"\[[0-9a-f]+:[0-9a-f]+(?::[0-9]+)?\]", "0", text, flags=re.I)
    try:
        ipaddress.IPv6Address(plain)
    except ValueError:
        return False
    return True


def split_host_port(pattern: str) -> Tuple[str, Optional[int]]:
    """``host:port`` -> (host, port) when the host part is a valid address; else the whole text, no port
    (as Ansible: ``[fe80::1]:22`` is a bracketed IPv6 address with a port, bare IPv6 has none)."""
    host, port = pattern, None
    m = re.fullmatch(r"\[(.+)\]:([0-9]+)", pattern) or re.fullmatch(r"((?:[^:\[\]]|\[[^\]]*\])*):([0-9]+)", pattern)
    if m:
        host, port = m.group(1), int(m.group(2))
    if host and (_is_ipv4(host) or _is_ipv6(host) or _is_hostname(host)):
        return host, port
    return pattern, None


def expand_hosts(pattern: str) -> List[str]:
    """Ansible host ranges: ``pi-[01:03]`` -> pi-01, pi-02, pi-03; ``[a:c]`` letters; ``[0:10:5]`` stride."""
    if "[" not in pattern:
        return [pattern]
    head, sep, rest = pattern.partition("[")
    body, close, tail = rest.partition("]")
    if not close or "[" in body:
        raise ConfigError(f"host range in '{pattern}' is not closed with ']'")
    bounds = body.split(":")
    if len(bounds) not in (2, 3):
        raise ConfigError(f"host range '[{body}]' in '{pattern}' must be begin:end or begin:end:step")
    beg, end = bounds[0] or "0", bounds[1]
    if not end:
        raise ConfigError(f"host range '[{body}]' in '{pattern}' must give an end")
    try:
        step = int(bounds[2]) if len(bounds) == 3 else 1
        if step <= 0:
            raise ValueError
        width = len(beg) if beg[0] == "0" and len(beg) > 1 else 0
        if width and width != len(end):
            raise ConfigError(f"host range '[{body}]' in '{pattern}': begin and end need the same number of digits")
        if len(beg) == 1 and len(end) == 1 and beg in string.ascii_letters and end in string.ascii_letters:
            i, j = string.ascii_letters.index(beg), string.ascii_letters.index(end)
            if i > j:
                raise ConfigError(f"host range '[{body}]' in '{pattern}' must have begin <= end")
            items = list(string.ascii_letters[i:j + 1:step])
        else:
            items = [str(n).zfill(width) for n in range(int(beg), int(end) + 1, step)]
    except ValueError:
        raise ConfigError(f"host range '[{body}]' in '{pattern}' is not understood (numbers, or single letters)") from None
    return [h for item in items for h in expand_hosts(head + item + tail)]


def host_pattern(pattern: str) -> Tuple[List[str], Optional[int]]:
    host, port = split_host_port(pattern)
    return expand_hosts(host), port


# ----------------------------------------------------------------------------------------------
# INI
# ----------------------------------------------------------------------------------------------
_SECTION = re.compile(r"\[([^:\]\s]+)(?::(\w+))?\]\s*(?:#.*)?")
_GROUP_LINE = re.compile(r"([^:\]\s]+)\s*(?:#.*)?")


def ini_value(text: str) -> Any:
    """Values are Python literals where they parse as one (``22`` is an int, ``"a b"`` a string),
    else the text itself: what Ansible's INI plugin does, in [group:vars] too."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SyntaxWarning)
            value = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return text
    return _plain(value)


def _plain(value: Any) -> Any:
    if isinstance(value, (tuple, list, set)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if value is Ellipsis:
        return "..."
    if isinstance(value, complex):
        return str(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


def parse_ini(text: str, path: Path, inv: InventoryData) -> None:
    pending: Dict[str, Dict[str, Any]] = {}
    group, state = "ungrouped", "hosts"
    for lineno, raw in enumerate(text.splitlines(), 1):
        where = f"{path}:{lineno}: "
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        m = _SECTION.fullmatch(line)
        if m:
            group, state = m.group(1), m.group(2) or "hosts"
            if state not in ("hosts", "children", "vars"):
                raise ConfigError(f"{where}section [{group}:{state}] has an unknown type '{state}' (hosts, vars or children)")
            if group not in inv.groups:
                # [g:vars] may come before [g] or [p:children] declares g; it must be declared somewhere.
                if state == "vars" and group not in pending:
                    pending[group] = {"line": lineno, "state": "vars"}
                inv.add_group(group)
            if group in pending and state != "vars":
                _resolve_pending(inv, group, pending, where)
            continue
        if line.startswith("[") and line.endswith("]"):
            raise ConfigError(f"{where}invalid section header '{line}' (no spaces inside the brackets)")
        if state == "hosts":
            try:
                tokens = shlex.split(line, comments=True)
            except ValueError as exc:
                raise ConfigError(f"{where}cannot split the host line ({exc})") from None
            if tokens[0].endswith(":") and split_host_port(tokens[0])[1] is None:
                raise ConfigError(f"{where}host '{tokens[0]}' ends in ':', which is reserved for a port")
            try:
                hosts, port = host_pattern(tokens[0])
            except ConfigError as exc:
                raise ConfigError(f"{where}{exc.message}") from None
            if "---" in hosts:
                raise ConfigError(f"{where}'---' starts a YAML document: name the file .yml, or write INI")
            hvars: Dict[str, Any] = {}
            for tok in tokens[1:]:
                key, eq, value = tok.partition("=")
                if not eq:
                    raise ConfigError(f"{where}expected key=value after the host name, got '{tok}'")
                hvars[key] = ini_value(value)
            for host in hosts:
                inv.add_host(host, group, port)
                inv.hosts[host].update(hvars)
        elif state == "vars":
            key, eq, value = line.partition("=")
            if not eq:
                raise ConfigError(f"{where}expected key=value in [{group}:vars], got '{line}'")
            inv.set_group_var(group, key.strip(), ini_value(value.strip()), where)
        else:
            m = _GROUP_LINE.fullmatch(line)
            if not m:
                raise ConfigError(f"{where}expected a group name in [{group}:children], got '{line}'")
            child = m.group(1)
            if child in inv.groups:
                inv.add_child(group, child, where)
            else:
                pending.setdefault(child, {"line": lineno, "state": "children", "parents": []})["parents"].append(group)
    for name, decl in pending.items():
        if decl["state"] == "vars":
            raise ConfigError(f"{path}:{decl['line']}: section [{name}:vars] is for group '{name}', which is never declared")
        raise ConfigError(f"{path}:{decl['line']}: section [{decl['parents'][-1]}:children] names group '{name}', "
                          "which is never declared")


def _resolve_pending(inv: InventoryData, group: str, pending: Dict[str, Dict[str, Any]], where: str) -> None:
    decl = pending.pop(group)
    for parent in decl.get("parents", []):
        inv.add_child(parent, group, where)
        if parent in pending and pending[parent]["state"] == "children":
            _resolve_pending(inv, parent, pending, where)


# ----------------------------------------------------------------------------------------------
# YAML (with line numbers for errors) and vars files
# ----------------------------------------------------------------------------------------------
class _Map(dict):  # type: ignore[type-arg]
    line = 0
    key_lines: Dict[Any, int]


def _loader() -> Any:
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    def mapping(loader: Any, node: Any) -> _Map:
        loader.flatten_mapping(node)
        out, out.key_lines, out.line = _Map(), {}, node.start_mark.line + 1
        for k_node, v_node in node.value:
            key = loader.construct_object(k_node, deep=True)
            try:
                out[key] = loader.construct_object(v_node, deep=True)
            except TypeError:
                raise yaml.constructor.ConstructorError(None, None, "a key that is a list or mapping", k_node.start_mark)
            out.key_lines[key] = k_node.start_mark.line + 1
        return out

    def unsafe(loader: Any, node: Any) -> Any:  # Ansible's !unsafe: a string never templated
        return loader.construct_scalar(node)

    def vault(loader: Any, node: Any) -> Any:
        raise ConfigError(f"line {node.start_mark.line + 1}: a !vault encrypted value; the built-in reader cannot "
                          "decrypt it", hint="pip install 'edgekit[ansible]' to read inventories through Ansible")

    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    Loader.add_constructor("!unsafe", unsafe)
    Loader.add_constructor("!vault", vault)
    return Loader


def load_yaml(text: str, path: Path) -> Any:
    import yaml

    if text.startswith("$ANSIBLE_VAULT;"):
        raise ConfigError(f"{path}: the file is Ansible Vault encrypted; the built-in reader cannot decrypt it",
                          hint="pip install 'edgekit[ansible]' to read inventories through Ansible")
    try:
        return yaml.load(text, Loader=_loader())  # noqa: S506 (a SafeLoader subclass)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc.message}", hint=exc.hint) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{where}: malformed YAML: {problem}") from None


def _type(value: Any) -> str:
    return {dict: "a mapping", _Map: "a mapping", list: "a list", str: "a string", int: "a number", float: "a number",
            bool: "a boolean"}.get(type(value), type(value).__name__)


def parse_yaml(data: Any, path: Path, inv: InventoryData) -> None:
    if not data:
        raise ConfigError(f"{path}: the YAML inventory is empty")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a YAML inventory is a mapping of groups, got {_type(data)}")
    if "plugin" in data:
        raise ConfigError(f"{path}: inventory plugin '{data['plugin']}' needs Ansible itself",
                          hint="pip install 'edgekit[ansible]' (ansible-core) to read plugin inventories")
    for name, body in data.items():
        _yaml_group(name, body, path, data.key_lines.get(name, 0) if isinstance(data, _Map) else 0, inv, [])


def _yaml_group(name: Any, body: Any, path: Path, line: int, inv: InventoryData, trail: List[str]) -> str:
    where = f"{path}:{line}: " if line else f"{path}: "
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{where}group name {name!r} must be a non-empty string")
    if body is not None and not isinstance(body, dict):
        raise ConfigError(f"{where}group '{name}' must be a mapping (hosts, vars, children), got {_type(body)}")
    if name in trail:
        raise ConfigError(f"{where}group '{name}' is its own ancestor (a loop of children)")
    inv.add_group(name)
    body = body or {}
    lines = getattr(body, "key_lines", {})
    for section in ("vars", "children", "hosts"):
        if isinstance(body.get(section), str):  # Ansible accepts a single name written as a string
            body[section] = {body[section]: None}
        if body.get(section) is not None and not isinstance(body[section], dict):
            at = f"{path}:{lines.get(section, line)}: "
            raise ConfigError(f"{at}invalid '{section}' entry for group '{name}': it requires a mapping, found "
                              f"{_type(body[section])}" + (" (write each host as a key ending in ':')" if section == "hosts" else ""))
    for key, value in body.items():
        at = f"{path}:{lines.get(key, line)}: "
        if key not in ("vars", "children", "hosts"):
            raise ConfigError(f"{at}group '{name}': unknown key '{key}' (only hosts, vars and children)")
        if value is None:
            continue
        sub_lines = getattr(value, "key_lines", {})
        if key == "vars":
            for var, v in value.items():
                inv.set_group_var(name, str(var), v, at)
        elif key == "children":
            for child, child_body in value.items():
                child = _yaml_group(child, child_body, path, sub_lines.get(child, 0), inv, [*trail, name])
                inv.add_child(name, child, at)
        else:
            for pattern, hvars in value.items():
                h_at = f"{path}:{sub_lines.get(pattern, lines.get(key, line))}: "
                if not isinstance(pattern, str):
                    raise ConfigError(f"{h_at}host pattern {pattern!r} in group '{name}' must be a string "
                                      "(quote numbers)")
                hvars = hvars or {}
                if not isinstance(hvars, dict):
                    raise ConfigError(f"{h_at}host '{pattern}' in group '{name}' must map to a mapping of variables, "
                                      f"got {_type(hvars)} {hvars!r}")
                try:
                    hosts, port = host_pattern(pattern)
                except ConfigError as exc:
                    raise ConfigError(f"{h_at}{exc.message}") from None
                for host in hosts:
                    inv.add_host(host, name, port)
                    inv.hosts[host].update({str(k): v for k, v in hvars.items()})
    return name


def yaml_mapping(text: str, path: Path) -> Optional[Any]:
    """The parsed YAML when the text is a YAML mapping, else None: Ansible tries its yaml plugin on
    files with no extension (and .yml/.yaml/.json) before its ini plugin."""
    try:
        data = load_yaml(text, path)
    except ConfigError:
        return None
    return data if isinstance(data, dict) else None


def read_vars_file(path: Path) -> Dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read vars file: {getattr(exc, 'strerror', None) or exc}") from None
    data: Any
    try:
        data = json.loads(text) if path.suffix == ".json" or text.lstrip().startswith("{") else load_yaml(text, path)
    except json.JSONDecodeError:
        data = load_yaml(text, path)
    if data is None or data == "":
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a vars file holds a mapping of variables, got {_type(data)}")
    return {str(k): v for k, v in data.items()}


def vars_files(base: Path, name: str) -> List[Path]:
    """The files host_vars/<name> or group_vars/<name> gives, in Ansible's order: the first of
    <name>, <name>.yml, .yaml, .json that exists; a directory means every file under it, sorted."""
    for ext in VARS_EXTENSIONS:
        p = base / (name + ext)
        if p.is_dir():
            return _dir_vars_files(p)
        if p.exists():
            return [p]
    return []


def _dir_vars_files(d: Path) -> List[Path]:
    found: List[Path] = []
    for child in sorted(d.iterdir(), key=lambda c: c.name):
        if child.name.startswith(".") or child.name.endswith("~"):
            continue
        if child.is_dir() and not child.suffix:
            found += _dir_vars_files(child)
        elif child.is_file() and child.suffix in VARS_EXTENSIONS:
            found.append(child)
    return found
