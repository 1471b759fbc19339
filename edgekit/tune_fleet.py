"""``edgekit deploy --group G --canary N --tune-on-canary``: the fleet gets what its canary measured.

Before the rollout, the build for the fleet's target is redone with ``--tune-on`` the first canary
(the candidates are rebuilt on this host, so this costs a build), and that bundle is what the
canaries validate and the rest of the fleet receives. A fleet of identical boards therefore tunes
once: the tuning cache answers the next rollout to any of them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

from .errors import ConfigError
from .tune import TuneOptions


def tune_on_canary(config: Any, devices: Sequence[Any], canary: Union[int, str, Sequence[str], None], *,
                   target: Optional[str] = None, dist: Optional[Path] = None, objective: str = "latency",
                   retune: bool = False, say: Callable[[str], None] = lambda _m: None) -> Any:
    """Rebuild the fleet's target tuned on the first canary (``--canary``: a count or names, as
    ``fleet.choose_canaries`` reads it); returns the BuildResult."""
    from . import targets
    from .build import build
    from .fleet import choose_canaries

    chosen = choose_canaries(devices, canary)
    if not chosen:
        raise ConfigError("--tune-on-canary needs --canary N or --canary NAMES: the canary is the device that measures")
    first = next(d for d in devices if d.name == chosen[0])
    names = {target or d.target for d in devices}
    profiles = {targets.resolve(n, project_dirs=config.target_dirs()).name for n in names}
    if len(profiles) != 1:
        raise ConfigError(f"--tune-on-canary: the devices have several targets ({', '.join(sorted(profiles))}); "
                          "select one group per target, or pass --target")
    profile = targets.resolve(next(iter(names)), project_dirs=config.target_dirs())
    opts = TuneOptions(device=first.name, spec=first, objective=objective, retune=retune)
    opts.check()
    say(f"tuning {profile.name} on canary '{first.name}' before the rollout")
    out = Path(config.resolve(dist or "dist"))  # type: ignore[arg-type]
    return build(config, profile, out, tune=opts, progress=say)
