"""``edgekit deploy --group G --canary N --tune-on-canary``: the fleet gets what its canary measured.

Before the rollout, the build for the fleet's target is redone with ``--tune-on`` the first canary
(the candidates are rebuilt on this host, so this costs a build), and that bundle is what the
canaries validate and the rest of the fleet receives. A fleet of identical boards therefore tunes
once: the tuning cache answers the next rollout to any of them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from .errors import ConfigError
from .tune import TuneOptions


def tune_on_canary(config: Any, devices: Sequence[Any], canary: int, *, target: Optional[str] = None,
                   dist: Optional[Path] = None, objective: str = "latency", retune: bool = False,
                   say: Callable[[str], None] = lambda _m: None) -> Any:
    """Rebuild the fleet's target tuned on the first canary; returns the BuildResult."""
    from . import targets
    from .build import build

    if canary < 1:
        raise ConfigError("--tune-on-canary needs --canary N (N >= 1): the canary is the device that measures")
    names = {target or d.target for d in devices}
    profiles = {targets.resolve(n, project_dirs=config.target_dirs()).name for n in names}
    if len(profiles) != 1:
        raise ConfigError(f"--tune-on-canary: the devices have several targets ({', '.join(sorted(profiles))}); "
                          "select one group per target, or pass --target")
    profile = targets.resolve(next(iter(names)), project_dirs=config.target_dirs())
    opts = TuneOptions(device=devices[0].name, spec=devices[0], objective=objective, retune=retune)
    opts.check()
    say(f"tuning {profile.name} on canary '{devices[0].name}' before the rollout")
    out = Path(config.resolve(dist or "dist"))  # type: ignore[arg-type]
    return build(config, profile, out, tune=opts, progress=say)
