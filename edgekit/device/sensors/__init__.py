"""The power sensor registry: one module per sensor family in this folder, each a read plus a pure
``parse()``.

A sampler is a subclass of :class:`Sampler` with a ``name``; defining the class registers it
(``__init_subclass__``), so adding a sensor is one file here (or one plugin file, see
``edgekit/device/plugins.py``) plus its captured-output case in ``tests/power_cases/``. Everything
else (the runner's ``--power`` names, ``auto``'s order, the target profile's ``power_sensor``, the
config's ``[power] sampler``, doctor's probe) reads :data:`REGISTRY`.

Standard library only, Python >= 3.8: this package ships in every release.
"""
from __future__ import print_function

import os
import subprocess
from typing import Any, Callable, Dict, List, Optional, Sequence

SCOPES = ("module rails", "board input", "wall", "cpu package")
"""module rails: a sum of on-module supply rails; board input: the module's (or card's) input rail;
wall: measured at the plug; cpu package: the CPU package(s) only."""

METHODS = ("energy counter", "power integral", "estimate")

Reading = Dict[str, Any]
CommandRunner = Callable[[Sequence[str]], str]
Opener = Callable[[str], str]

REGISTRY = {}  # type: Dict[str, type]
"""Sensor name -> Sampler subclass, in ``auto`` order (see :func:`auto_order`)."""


class SamplerUnavailable(Exception):
    """The sensor is absent or unreadable here; ``reason`` says which file or command, and why."""

    def __init__(self, reason):
        # type: (str) -> None
        Exception.__init__(self, reason)
        self.reason = reason


class SensorError(Exception):
    """A read failed (a command exited non-zero, a file held no number...)."""


def read_text(path):
    # type: (str) -> str
    """Read a small file (a sysfs attribute is at most a page) with open, read, close and no text-IO
    wrapper: at 100 Hz over six files this is most of a sampler's cost."""
    fd = os.open(path, os.O_RDONLY)
    try:
        chunks = [os.read(fd, 8192)]
        while len(chunks[-1]) == 8192:
            chunks.append(os.read(fd, 8192))
    finally:
        os.close(fd)
    return b"".join(chunks).decode("utf-8", "replace")


def run_command(argv, timeout=5.0):
    # type: (Sequence[str], float) -> str
    """Run a command to completion and return its standard output."""
    try:
        proc = subprocess.run(list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              universal_newlines=True, timeout=timeout)
    except OSError as exc:
        raise SensorError("cannot run %s: %s" % (argv[0], exc.strerror or exc))
    except subprocess.TimeoutExpired:
        raise SensorError("%s did not answer within %.0f s" % (" ".join(argv), timeout))
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout or "").strip().splitlines()
        raise SensorError("%s exited with %d%s" % (" ".join(argv), proc.returncode,
                                                  (": " + detail[0]) if detail else ""))
    return proc.stdout


def profile_get(profile, key, default=None):
    # type: (Any, str, Any) -> Any
    """A target profile's field, whether the profile is the manifest's dict or a TargetProfile."""
    if profile is None:
        return default
    if isinstance(profile, dict):
        value = profile.get(key, default)
    else:
        value = getattr(profile, key, default)
    return default if value is None else value


def int_of(text, what):
    # type: (str, str) -> int
    try:
        return int(str(text).strip().split()[0])
    except (ValueError, IndexError):
        raise ValueError("%s holds %r, not an integer" % (what, str(text)[:40]))


def uid():
    # type: () -> str
    try:
        return str(os.getuid())
    except AttributeError:  # pragma: no cover - not on Linux
        return "?"


class Sampler(object):
    """Base class. A sampler is constructed cheaply; ``probe()`` finds the sensor or raises
    SamplerUnavailable; ``sample()`` = ``parse(read())`` (+ counter bookkeeping for counters).

    A subclass that sets ``name`` registers itself. It declares ``scope`` (one of SCOPES),
    ``method`` (one of METHODS), ``reading`` (``"power"``: instantaneous watts, integrated by the
    trapezoidal rule; ``"energy"``: a cumulative counter, differenced), ``reads`` (for humans) and
    ``auto_rank``: where ``--power auto`` tries it when the profile names no sensor (lower first;
    direct sysfs reads before commands, the estimate last).
    """

    name = ""
    scope = ""
    method = ""
    reading = "power"  # or "energy"
    is_estimate = False
    reads = ""  # what it reads, for humans
    auto_rank = 50

    def __init_subclass__(cls, **kwargs):
        super(Sampler, cls).__init_subclass__(**kwargs)
        if cls.__dict__.get("name"):
            register(cls)

    def __init__(self, root="/", command_runner=None, opener=None, profile=None):
        # type: (str, Optional[CommandRunner], Optional[Opener], Any) -> None
        self.root = root or "/"
        self.command_runner = command_runner or run_command
        self.injected_runner = command_runner is not None
        self.opener = opener or read_text
        self.profile = profile
        self.scope_note = ""
        self.total_rail = None  # type: Optional[str]
        self.notes = []  # type: List[str]
        self.rate_hz = 10.0

    def path(self, *parts):
        # type: (str) -> str
        return os.path.join(self.root, *parts)

    def probe(self):
        # type: () -> None
        raise NotImplementedError

    def read(self):
        # type: () -> Any
        raise NotImplementedError

    @staticmethod
    def parse(raw):
        # type: (Any) -> Reading
        raise NotImplementedError

    def sample(self):
        # type: () -> Reading
        return self.parse(self.read())

    def health(self):
        # type: () -> Optional[Dict[str, Any]]
        return None

    def close(self):
        # type: () -> None
        pass

    def describe(self):
        # type: () -> Dict[str, Any]
        return {"name": self.name, "scope": self.scope, "method": self.method,
                "is_estimate": self.is_estimate, "reads": self.reads}

    def _open(self, path):
        # type: (str) -> str
        try:
            return self.opener(path)
        except PermissionError:
            raise SamplerUnavailable("cannot read %s: permission denied (running as uid %s)"
                                     % (path, uid()))


def _origin(cls):
    # type: (type) -> str
    return "%s.%s" % (cls.__module__, cls.__qualname__)


def register(cls):
    # type: (type) -> type
    """Add a Sampler subclass under its ``name``, keeping REGISTRY in ``auto`` order. A second class
    under a taken name is refused, so a plugin cannot silently replace a built-in sensor."""
    name = cls.name
    old = REGISTRY.get(name)
    if old is not None and _origin(old) != _origin(cls):
        raise ValueError("power sensor '%s' is registered twice: by %s and by %s" % (name, _origin(old), _origin(cls)))
    REGISTRY[name] = cls
    ordered = sorted(REGISTRY.items(), key=lambda kv: (kv[1].auto_rank, kv[0]))
    REGISTRY.clear()
    REGISTRY.update(ordered)
    return cls


def auto_order():
    # type: () -> List[str]
    """``--power auto`` without a profile's sensor tries these in order; the estimate always answers."""
    return list(REGISTRY)


def _load_builtin():
    # type: () -> None
    """Import every sensor module in this folder: a new file is a new sensor, with no list to edit."""
    import importlib

    here = os.path.dirname(os.path.abspath(__file__))
    for fname in sorted(os.listdir(here)):
        if fname.endswith(".py") and not fname.startswith("_"):
            importlib.import_module("." + fname[:-3], __name__)


_load_builtin()
