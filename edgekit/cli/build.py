"""``edgekit build`` and ``edgekit targets``."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import click

from .render import clean, echo, echo_json, kv, table
from .tune import print_tuning, tune_options, tune_settings

class _Precisions(click.Choice):
    """``auto`` and every registered precision (``edgekit.quantize.registry``), read when click needs them."""

    def __init__(self) -> None:
        super().__init__([])

    @property  # type: ignore[override]
    def choices(self):  # type: ignore[no-untyped-def]
        from ..quantize import registry

        return ["auto", *registry.names()]

    @choices.setter
    def choices(self, _value) -> None:  # type: ignore[no-untyped-def]
        pass


CONFIG_OPTION = click.option("--config", "config_path", type=click.Path(path_type=Path), default=Path("edgekit.toml"),
                             show_default=True, help="The project file.")


@click.command()
@click.option("--target", "-t", "target_names", multiple=True,
              help="Target profile or family (jetson, rpi, x86). Repeat for several; default: the config's targets.")
@CONFIG_OPTION
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Bundle directory [default: dist/ beside the config].")
@click.option("--precision", type=_Precisions(), default="auto", show_default=True,
              help="auto keeps the fastest candidate that meets the validation threshold.")
@click.option("--budget", type=float, default=300.0, show_default=True, help="Seconds for the accuracy-aware search.")
@click.option("--remeasure", is_flag=True,
              help="Time every comparison afresh (default: reuse the previous build record's timings of identical "
                   "models, so a rebuild is byte-identical).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@tune_options
def build(target_names: List[str], config_path: Path, out: Optional[Path], precision: str, budget: float,
          remeasure: bool, as_json: bool, **tune_args: object) -> None:
    """Export, optimize and quantize the model for a target; write dist/<model>/<target>/."""
    from .. import config as config_mod
    from .. import targets
    from ..build import build as run_build
    from ..errors import ConfigError

    tune = tune_settings(tune_args)  # its mistakes are one line each, before anything is built
    cfg = config_mod.load(config_path)
    if tune is not None:
        cfg.device(tune.device)
    names = list(target_names) or cfg.targets
    if not names:
        raise ConfigError(f"{cfg.path}: no target given; pass --target NAME or list 'targets' in the file")
    project_dirs = cfg.target_dirs()
    profiles = [targets.resolve(n, project_dirs=project_dirs) for n in names]  # fail fast, before any export
    entries = targets.catalog(project_dirs=project_dirs)
    for p in profiles:
        if entries[p.name].replaces is not None and not as_json:
            click.echo(f"note: target '{p.name}' comes from {entries[p.name].path}, which overrides the built-in profile",
                       err=True)
    out_dir = out or (cfg.root / "dist")
    results = []
    for profile in profiles:
        results.append(_build_one(run_build, cfg, profile, out_dir, precision, budget, remeasure, quiet=as_json,
                                  tune=tune))
    if as_json:
        echo_json(results[0] if len(results) == 1 else results)
        return
    table("edgekit build", ["target", "precision", "method", "metric", "guards", "size", "bundle"],
          [(r.target, r.precision, r.method, _fmt_metric(r.metric), _fmt_guard(r.guard), f"{r.size_bytes / 1e6:.2f} MB "
            f"({r.size_bytes / max(r.fp32_size_bytes, 1):.0%} of fp32)", str(r.bundle)) for r in results])
    for r in results:
        echo(f"{r.target}: {r.reason}")
        if r.calibration:
            echo(f"{r.target}: {r.calibration}")
        for name, findings in sorted(r.guard_refused.items()):
            echo(f"{r.target}: guards refused {name}: {findings}")
        if "reused" in r.timing_note:
            echo(f"{r.target}: {r.timing_note}")
        if r.tuning:
            print_tuning(r.target, r.tuning)


def _fmt_metric(m: dict) -> str:
    if not m:
        return ""
    s = f"{m.get('value', float('nan')):.4f}"
    return s + (f" (min {m['min']:.4f})" if "min" in m else "")


def _fmt_guard(g: dict) -> str:
    if not g:
        return "-"
    if g.get("passed", True):
        return "pass" if g.get("outputs") else "pass (reference)"
    return f"FAIL ({len(g.get('findings') or [])} finding(s))"


def _build_one(run_build, cfg, profile, out_dir, precision, budget, remeasure, quiet, tune=None):  # type: ignore[no-untyped-def]
    if quiet:
        return run_build(cfg, profile, out_dir, precision=precision, budget_s=budget, remeasure=remeasure, tune=tune)
    from rich.console import Console
    from rich.markup import escape

    console = Console(stderr=True, log_path=False)
    with console.status(escape(f"[{profile.name}] starting")) as status:
        def progress(msg: str) -> None:
            line = escape(clean(f"[{profile.name}] {msg}"))
            status.update(line)
            console.log(line)

        return run_build(cfg, profile, out_dir, precision=precision, budget_s=budget, progress=progress,
                         remeasure=remeasure, tune=tune)


def _project_dirs(config_path: Path) -> List[Path]:
    """The project's own profile folders when there is a project file here (else built-ins only)."""
    from .. import config as config_mod

    if not config_path.is_file():
        return []
    return config_mod.load(config_path).target_dirs()


@click.group()
def targets() -> None:
    """List and inspect target profiles (built-in, and the project's targets/*.toml)."""


@targets.command("list")
@CONFIG_OPTION
@click.option("--json", "as_json", is_flag=True)
def targets_list(config_path: Path, as_json: bool) -> None:
    """All known target profiles, and where each comes from."""
    from .. import targets as t

    entries = t.catalog(project_dirs=_project_dirs(config_path))
    if as_json:
        echo_json({n: {**e.profile.model_dump(mode="json"), "source": e.origin} for n, e in entries.items()})
        return
    table("targets", ["name", "family", "arch", "ISA", "runtime / providers", "int8 preset", "power", "source"],
          [(p.name + (" *" if p.family_default else ""), p.family, p.arch, " ".join(p.isa_features),
            f"{p.runtime.name}: {', '.join(p.runtime.providers)}",
            f"{p.quantization.activation_type}/{p.quantization.weight_type}"
            f"{' reduce_range' if p.quantization.reduce_range else ''}", p.power_sensor, e.origin)
           for p, e in ((e.profile, e) for e in entries.values())])
    click.echo("* family default; 'x86' picks the profile matching this host's CPU flags (x86-avx2 when none does)")


@targets.command("show")
@click.argument("name")
@CONFIG_OPTION
@click.option("--json", "as_json", is_flag=True)
def targets_show(name: str, config_path: Path, as_json: bool) -> None:
    """One profile (a full name or a family such as jetson, rpi, x86)."""
    from .. import targets as t

    dirs = _project_dirs(config_path)
    p = t.resolve(name, project_dirs=dirs)
    if as_json:
        echo_json(p.model_dump(mode="json"))
        return
    q = p.quantization
    kv(p.name, [
        ("source", t.catalog(project_dirs=dirs)[p.name].origin),
        ("description", p.description), ("family", p.family), ("arch / cpu", f"{p.arch} / {p.cpu}"),
        ("isa features", " ".join(p.isa_features)), ("accelerator", p.accelerator or "-"),
        ("runtime", p.runtime.name), ("providers", " > ".join(p.runtime.providers)),
        ("quantization", f"{q.format} {q.activation_type}/{q.weight_type} per_channel={q.per_channel} "
                         f"reduce_range={q.reduce_range} calibration={q.calibration_method}"),
        ("precisions", ", ".join(q.precisions)), ("graph optimization", p.graph_optimization),
        ("intra-op threads", p.intra_op_threads or "runtime default"), ("power sensor", p.power_sensor),
        ("min python", p.min_python), ("notes", "\n".join(p.notes)),
    ])


def register(main: click.Group) -> None:
    main.add_command(build)
    main.add_command(targets)
