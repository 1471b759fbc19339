"""What every device command shares when it runs on several hosts: the host-selection options, one
live line per host as it finishes, the recap (Ansible's PLAY RECAP), ``--json`` and the record of
failed hosts that ``--retry-failed`` reads.

Live lines are for people: colored on a terminal, plain and unpadded when piped (a CI log gets
``board-1  failed  ...`` lines, never a 200-column table). Every value from a device goes through
``clean`` first.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

import click

from .render import clean, echo_json

STYLE = {"switched": "green", "unchanged": "cyan", "repaired": "yellow", "rolled back": "magenta",
         "failed": "bold red", "not attempted": "dim", "ok": "green"}
LAST_FAILED_DIR = ".edgekit"


def host_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """-d/--device (repeatable), -g/--group, --limit, --retry-failed, --max-parallel, --connect-timeout."""
    options = [
        click.option("--device", "-d", "devices", multiple=True, metavar="NAME",
                     help="A device (edgekit.toml or inventory); repeat for several."),
        click.option("--group", "-g", default=None, metavar="GROUP", help="Every device of a group ('all' for every device)."),
        click.option("--limit", "-l", default=None, metavar="NAMES|@FILE",
                     help="Only these of the selected devices: comma-separated names, or @FILE with one name a line."),
        click.option("--retry-failed", is_flag=True,
                     help=f"Only the devices that failed the last run of this command (recorded in {LAST_FAILED_DIR}/)."),
        click.option("--max-parallel", type=click.IntRange(min=1), default=None,
                     help="Devices at once [default: deploy.max_parallel]."),
        click.option("--connect-timeout", type=click.FloatRange(min=0, min_open=True), default=None, metavar="S",
                     help="Seconds to reach each device [device connect_timeout, else ~/.ssh/config ConnectTimeout, else 10]."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def last_failed_path(config: Any, action: str) -> Path:
    return Path(config.root) / LAST_FAILED_DIR / f"last-failed-{action}"


def read_limit(config: Any, action: str, limit: Optional[str], retry_failed: bool) -> Optional[List[str]]:
    """The names ``--limit`` or ``--retry-failed`` allow (None: no narrowing)."""
    from ..errors import ConfigError

    if limit is not None and retry_failed:
        raise ConfigError("give --limit or --retry-failed, not both (--retry-failed is --limit @" +
                          str(last_failed_path(config, action)) + ")")
    if retry_failed:
        limit = "@" + str(last_failed_path(config, action))
        if not last_failed_path(config, action).is_file():
            raise ConfigError(f"--retry-failed: no failed devices recorded for '{action}' "
                              f"({last_failed_path(config, action)} does not exist)",
                              hint="the last run succeeded everywhere, or never ran from this project")
    if limit is None:
        return None
    if limit.startswith("@"):
        path = Path(limit[1:]).expanduser()
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"--limit {limit}: cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
        return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    return [n.strip() for n in limit.split(",") if n.strip()]


def record_failed(config: Any, run: Any) -> Optional[Path]:
    """Write the hosts that did not succeed, one a line (Ansible's retry file); remove the record when
    every host succeeded, so --retry-failed never reruns hosts that are fine now."""
    path = last_failed_path(config, run.action)
    failed = run.failed
    try:
        if not failed:
            path.unlink(missing_ok=True)
            return None
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(f"{n}\n" for n in failed), encoding="utf-8")
        tmp.replace(path)
    except OSError:
        return None  # a read-only project still gets its results; only the retry shortcut is lost
    return path


class LiveLines:
    """Prints one line per host as its result arrives (``on_result`` for fleet_results.collect)."""

    def __init__(self, hosts: Sequence[str], *, quiet: bool = False) -> None:
        self.width = min(max((len(clean(h)) for h in hosts), default=4), 40)
        self.quiet = quiet
        # --json keeps stdout for the JSON document: progress goes to stderr, for a person only.
        self.stream = sys.stderr if quiet else sys.stdout
        self.tty = self.stream.isatty()
        self.console = None
        if self.tty:
            from rich.console import Console

            self.console = Console(file=self.stream, highlight=False)

    def __call__(self, r: Any) -> None:
        if self.quiet and not self.tty:
            return
        for text, style in self.lines(r):
            if self.console is not None:
                from rich.text import Text

                self.console.print(Text(text, style=style or ""), soft_wrap=True)
            else:
                click.echo(text, file=self.stream)

    def lines(self, r: Any) -> List[Tuple[str, Optional[str]]]:
        name = clean(r.host, newlines=False)
        head = f"{name:<{self.width}}  {r.outcome:<13}"
        parts = [f"release {clean(r.release, newlines=False)}" if r.release else "",
                 f"[{r.phase}]" if r.phase else "", f"{r.seconds:.1f} s",
                 clean(r.summary, newlines=False)[:200] if r.summary else ""]
        out = [(head + "  " + "  ".join(p for p in parts if p), STYLE.get(r.outcome))]
        if r.error is not None and r.outcome != "not attempted":
            out.append((f"{'':<{self.width}}  error: {clean(r.error.message, newlines=False)[:600]}", None))
            if r.error.hint:
                out.append((f"{'':<{self.width}}  hint: {clean(r.error.hint, newlines=False)[:400]}", "dim"))
        return out


def finish(run: Any, config: Any, as_json: bool, exit_code: Union[int, Callable[[Any], int]]) -> None:
    """The recap (or the JSON document), the failed-hosts record, and the exit: a FleetError unless
    every host succeeded."""
    from ..fleet import fleet_error

    recorded = record_failed(config, run)
    if as_json:
        echo_json(run.to_json())
    else:
        click.echo(f"RECAP {run.action}: {run.recap.line()}  ({len(run.results)} device(s), {run.seconds:.1f} s)")
        if run.stopped:
            click.echo(f"stopped: {clean(run.stopped, newlines=False)}")
        if recorded is not None:
            click.echo(f"failed devices recorded in {recorded}; rerun only them with --retry-failed")
    if not run.ok:
        err = fleet_error(run, len(run.results))
        err.exit_code = exit_code(run) if callable(exit_code) else exit_code
        raise err


def run_fleet(action: str, config: Any, hosts: Sequence[Any], results: Any, as_json: bool,
              exit_code: Union[int, Callable[[Any], int]],
              engine: str = "builtin", *, canary: Optional[List[str]] = None) -> Any:
    """Drain an engine's results with live lines, then :func:`finish`."""
    from ..fleet_results import collect

    t0 = time.perf_counter()
    live = LiveLines([h.name for h in hosts], quiet=as_json)
    run = collect(action, hosts, results, live, engine=engine)
    if canary is not None:
        run.canary = canary
    run.seconds = round(time.perf_counter() - t0, 3)
    finish(run, config, as_json, exit_code)
    return run


def is_single(devices: Sequence[str], group: Optional[str], limit: Optional[str], retry_failed: bool) -> bool:
    """One --device and nothing else: the command prints that device's full detail, as before."""
    return len(devices) == 1 and group is None and limit is None and not retry_failed

