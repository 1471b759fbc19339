"""Plugins: a project's own metrics and power sensors, each one Python file.

In edgekit.toml, ``plugins = ["plugins/mean_abs.py", "plugins/shunt.py"]`` (paths relative to the
file). The host imports each file when it loads the project, before the config's metric and sensor
names are checked; the classes a file defines (``Metric`` or ``Sampler`` subclasses) register
themselves. ``edgekit build`` copies the files into the release's ``plugins/`` folder (they are in
the manifest and its hash like every other file), and the runner imports them from there before it
scores or samples, so the device runs the same code the host checked with.

A plugin runs on the device too: standard library, numpy and ``edgekit.device`` only, Python 3.8.
"""
import glob
import hashlib
import os
import re
import sys
from typing import Any, Dict, List

from .errors import RunnerError, first_line

PLUGIN_DIR = "plugins"
"""The folder of a release that holds its plugin files."""

_LOADED = {}  # type: Dict[str, Any]
"""Real path -> module: a file is imported once per process, however often a project is loaded."""


class PluginError(RunnerError):
    def __init__(self, message):
        RunnerError.__init__(self, "plugin", message, "fix the plugin file, or remove it from edgekit.toml's plugins")


def module_name(real):
    # type: (str) -> str
    """A module name unique to the file: its stem, and a hash of where it is (two plugins may share a
    stem, and each must be its own module)."""
    stem = re.sub(r"[^A-Za-z0-9_]", "_", os.path.splitext(os.path.basename(real))[0])
    return "edgekit_plugin_%s_%s" % (stem, hashlib.sha256(real.encode("utf-8")).hexdigest()[:10])


def load_file(path):
    # type: (str) -> Any
    """Import one plugin file (once per process) and return its module."""
    import importlib.util

    real = os.path.realpath(path)
    if real in _LOADED:
        return _LOADED[real]
    if not real.endswith(".py"):
        raise PluginError("plugin %s: expected a .py file" % path)
    if not os.path.isfile(real):
        raise PluginError("plugin %s: no such file" % path)
    name = module_name(real)
    spec = importlib.util.spec_from_file_location(name, real)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # the user's code: any error is one line naming the file
        del sys.modules[name]
        raise PluginError("plugin %s failed to import: %s: %s" % (path, type(exc).__name__, first_line(exc)))
    _LOADED[real] = module
    return module


def release_files(release):
    # type: (str) -> List[str]
    return sorted(glob.glob(os.path.join(release, PLUGIN_DIR, "*.py")))


def load_dir(release):
    # type: (str) -> List[Any]
    """Import every plugin a release ships (``<release>/plugins/*.py``), in name order."""
    return [load_file(path) for path in release_files(release)]
