"""The sampler registry, seen from the host: names, static descriptions, edgekit errors."""
from __future__ import annotations

from typing import Dict, List, Type

from edgekit.device.power import REGISTRY, Sampler
from edgekit.errors import ConfigError


def sampler_names() -> List[str]:
    return list(REGISTRY)


def get_sampler_class(name: str) -> Type[Sampler]:
    if name == "auto":
        raise ConfigError("'auto' is resolved on the device, not a sampler class",
                          hint="pass a sampler name, or let the runner pick with --power auto")
    try:
        return REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown power sampler '{name}'",
                          hint="known samplers: auto, " + ", ".join(sorted(REGISTRY))) from None


def sampler_table() -> List[Dict[str, object]]:
    """What each sampler reads, its scope and method, without probing anything (for docs/--help)."""
    return [{"name": cls.name, "scope": cls.scope, "method": cls.method, "is_estimate": cls.is_estimate,
             "reads": cls.reads} for cls in REGISTRY.values()]
