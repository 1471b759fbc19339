"""Plugins: one module or file that registers a new candidate, exporter (or any other registry entry).

A registry entry registers itself when its class or function is defined, so a plugin only has to be
imported. Two ways to name one:

* an installed package declares an entry point in the registry's group, e.g. in pyproject.toml
  ``[project.entry-points."edgekit.candidates"] int4 = "my_pkg.int4"``;
* ``EDGEKIT_PLUGINS``: module names or ``.py`` file paths, separated by commas or ``os.pathsep``
  (``EDGEKIT_PLUGINS=./int4.py edgekit build``). These load for every group.

Each registry calls ``load(group)`` before it answers; each plugin is imported once per process.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import pkgutil
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Dict, Generic, List, Set, TypeVar

from .errors import ConfigError

ENV = "EDGEKIT_PLUGINS"
T = TypeVar("T")
_done_groups: Set[str] = set()
_modules: Dict[str, object] = {}
"""Plugin spec (module name or resolved file path) -> the imported module."""


def named_in_env() -> List[str]:
    raw = os.environ.get(ENV, "")
    return [p.strip() for p in re.split(r"[,%s]" % re.escape(os.pathsep), raw) if p.strip()]


def _import_file(path: Path) -> object:
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:10]
    name = f"edgekit_plugin_{re.sub(r'[^0-9A-Za-z_]', '_', path.stem)}_{digest}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"{ENV}: {path} is not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look classes up by module name
    try:
        spec.loader.exec_module(module)
    except Exception:
        del sys.modules[name]
        raise
    return module


def import_one(spec: str) -> object:
    """Import the plugin ``spec`` (a module name or a .py path) once; errors are one ConfigError line."""
    is_file = spec.endswith(".py") or os.sep in spec
    key = str(Path(spec).resolve()) if is_file else spec
    if key in _modules:
        return _modules[key]
    try:
        if is_file:
            path = Path(key)
            if not path.is_file():
                raise ConfigError(f"{ENV}: plugin file not found: {spec}")
            module = _import_file(path)
        else:
            module = importlib.import_module(spec)
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"{ENV}: importing plugin '{spec}' failed: {type(exc).__name__}: {exc}") from None
    _modules[key] = module
    return module


def register(registry: Dict[str, Any], key: str, cls: type, what: str) -> None:
    """Put ``cls`` in ``registry`` under ``key`` (what every registry's ``__init_subclass__`` does);
    the same class defined again (a module imported twice) replaces itself, another one is an error."""
    old = registry.get(key)
    if old is not None and (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__):
        raise TypeError(f"{what} '{key}' is already registered by {old.__module__}.{old.__qualname__}")
    registry[key] = cls


def import_package(package: ModuleType) -> None:
    """Import every module of ``package``: the built-in entries of a registry, one per file."""
    for name in sorted(m.name for m in pkgutil.iter_modules(package.__path__)):
        importlib.import_module(f"{package.__name__}.{name}")


def load(group: str) -> None:
    """Import every plugin of ``group`` (entry points) and every one named in ``EDGEKIT_PLUGINS``."""
    for spec in named_in_env():
        import_one(spec)
    if group in _done_groups:
        return
    _done_groups.add(group)
    from importlib.metadata import entry_points

    for ep in entry_points(group=group):
        try:
            ep.load()
        except Exception as exc:
            raise ConfigError(f"plugin '{ep.name}' ({ep.value}, entry point group {group}) failed to load: "
                              f"{type(exc).__name__}: {exc}") from None


class Catalog(Generic[T]):
    """What a registry module answers from its ``registry`` dict: its built-in entries (every module
    of ``package()``, imported lazily since they import the registry) and its plugins loaded on first
    use, the entries in ``order``, their names, and ``get`` whose error lists every known name."""

    def __init__(self, registry: Dict[str, T], group: str, package: Callable[[], ModuleType], *,
                 order: Callable[[T], Any], name: Callable[[T], str], what: str) -> None:
        self.registry, self.group, self.package = registry, group, package
        self.order, self.name, self.what = order, name, what
        self._loaded = False

    def ensure_loaded(self) -> None:
        if not self._loaded:
            self._loaded = True
            import_package(self.package())
        load(self.group)  # cheap once loaded; EDGEKIT_PLUGINS may name more since

    def entries(self) -> List[T]:
        self.ensure_loaded()
        return sorted(self.registry.values(), key=self.order)

    def names(self) -> List[str]:
        return [self.name(e) for e in self.entries()]

    def get(self, key: str) -> T:
        self.ensure_loaded()
        try:
            return self.registry[key]
        except KeyError:
            raise ValueError(f"unknown {self.what} '{key}' (known: {', '.join(self.names())})") from None

    def check(self, value: str) -> str:
        """Pydantic validator (``AfterValidator``): ``value`` is a registered name."""
        self.get(value)
        return value
