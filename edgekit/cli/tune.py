"""``--tune-on`` and its options, shared by ``edgekit build`` (and ``deploy --tune-on-canary``), and
the tuning table in the build output. Nothing heavy is imported here (``--help`` stays fast)."""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional

import click

from .render import echo, table


def tune_options(f: Callable[..., Any]) -> Callable[..., Any]:
    opts = [
        click.option("--tune-on", "tune_on", default=None, metavar="DEVICE",
                     help="Measure the candidates that passed here on DEVICE (accuracy, guards, interleaved "
                          "latency, energy where it has a sensor) and ship the best by --objective."),
        click.option("--objective", type=click.Choice(["latency", "p99", "energy"]), default="latency",
                     show_default=True, help="With --tune-on: p50 latency, p99 latency, or mJ per inference above "
                                             "idle (needs a power sensor on the device)."),
        click.option("--max-p99-ms", type=float, default=None,
                     help="With --objective latency: the fastest candidate whose p99 is at most this."),
        click.option("--max-p50-ms", type=float, default=None,
                     help="With --objective energy: the lowest-energy candidate whose p50 is at most this."),
        click.option("--retune", is_flag=True, help="Measure again instead of reusing a tuning of identical "
                                                   "candidates on an identical device."),
        click.option("--tune-budget", type=float, default=40.0, show_default=True,
                     help="With --tune-on: seconds the device may spend timing (it stops once the medians are stable)."),
        click.option("--tune-prune/--no-tune-prune", "tune_prune", default=True, show_default=True,
                     help="With --tune-on: also time each int8 candidate with one op-type group float at a time "
                          "(latency pruning on the device, in the same invocation)."),
        click.option("--tune-allow-emulated", "tune_allow_emulated", is_flag=True,
                     help="FOR TESTS ONLY: let an emulated board time the candidates (its latency is the "
                          "emulator's, not the board's)."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def tune_settings(args: Dict[str, Any]) -> Optional[Any]:
    """The TuneOptions for ``--tune-on``, checked; None without it (and the other options refused)."""
    device = args.get("tune_on")
    if device is None:
        given = [flag for flag, key in (("--max-p99-ms", "max_p99_ms"), ("--max-p50-ms", "max_p50_ms"),
                                        ("--retune", "retune"), ("--tune-allow-emulated", "tune_allow_emulated"))
                 if args.get(key)]
        if args.get("tune_budget", 40.0) != 40.0:
            given.append("--tune-budget")
        if args.get("objective", "latency") != "latency":
            given.insert(0, "--objective")
        if given:
            from ..errors import ConfigError

            raise ConfigError(f"{', '.join(given)} only applies with --tune-on DEVICE")
        return None
    from ..tune import TuneOptions

    opts = TuneOptions(device=device, objective=args.get("objective") or "latency", max_p50_ms=args.get("max_p50_ms"),
                       max_p99_ms=args.get("max_p99_ms"), retune=bool(args.get("retune")),
                       allow_emulated=bool(args.get("tune_allow_emulated")),
                       budget_s=float(args.get("tune_budget") or 40.0), prune=bool(args.get("tune_prune", True)))
    opts.check()
    return opts


def _ms(x: Optional[float]) -> str:
    return "-" if x is None else f"{x:.3f}"


def print_tuning(target: str, tuning: Dict[str, Any]) -> None:
    facts = tuning.get("facts") or {}
    run = tuning.get("run") or {}
    cpu = facts.get("cpu_model") or facts.get("cpu_core") or facts.get("machine")
    title = (f"tuning on {tuning.get('device')} ({cpu}; {facts.get('runtime')} {facts.get('runtime_version')}"
             f"{'; EMULATED' if facts.get('emulated') else ''}) - objective: {tuning.get('objective')}")
    rows = []
    for r in tuning.get("candidates") or []:
        mark = "*" if r["name"] == tuning.get("chosen") else ""
        rows.append((mark + r["name"], "-" if r.get("metric") is None else f"{r['metric']:.4f}",
                     r.get("guard") or "-", _ms(r.get("p50_ms")), _ms(r.get("p99_ms")),
                     "-" if r.get("energy_mj") is None else f"{r['energy_mj']:.4f}", r.get("provider") or "-",
                     r.get("refused") or "ok"))
    table(title, ["candidate", "device metric", "guards", "p50 ms", "p99 ms", "mJ/inf", "provider", "passes"], rows)
    echo(f"{target}: tuned: {tuning.get('reason')}")
    for p in tuning.get("latency_pruning") or []:
        times = (f" ({p['int8_p50_ms']} ms int8, {p['float_p50_ms']} ms with {p['op_type']} float)"
                 if "int8_p50_ms" in p else "")
        echo(f"{target}: pruning on the device: {p['candidate']} {p['op_type']}: {p['result']}{times}")
    method = tuning.get("method") or {}
    echo(f"{target}: tuning: {method.get('rounds')} interleaved rounds ({method.get('stopped')}), A/A noise floor "
         f"{(method.get('noise_floor') or 0):.1%}; "
         + (f"reused the measurement of '{tuning.get('measured', {}).get('device')}' at "
            f"{tuning.get('measured', {}).get('at')} (--retune measures again)" if run.get("reused") else
            f"measured in {run.get('seconds', 0):.1f} s, {run.get('bytes_sent', 0) / 1e6:.2f} MB sent "
            f"({run.get('files_sent', 0)} files sent, {run.get('files_reused', 0)} already on the device)"))
