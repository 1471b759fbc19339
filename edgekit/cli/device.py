"""Device commands: ``edgekit validate``, ``edgekit doctor`` and ``edgekit report``.

Each body imports its stage lazily (matplotlib loads only in ``report``, paramiko only for SSH
devices), prints the returned value as a table or ``--json``, and maps outcomes to exit codes:
a metric below its threshold exits with AccuracyError's code, a failed doctor check with
DeviceError's.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import click

from ..errors import AccuracyError, DeviceError
from .fleet_output import host_options, is_single, run_fleet
from .render import clean, echo, echo_json, kv, table


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}{unit}"
    return f"{value}{unit}"


def _device_text(value: Any, limit: int = 300) -> str:
    """Text from the device on one bounded line (table cells are cleaned and never parsed as markup)."""
    return " ".join(clean(value).split())[:limit]


def _validation_rows(res: Any) -> List[Tuple[str, str]]:
    m, lat, rt = res.metric, res.latency, res.runtime
    verdict = "pass" if m.get("passed") else "FAIL"
    rows = [("device", res.device), ("release", _fmt(res.release_id)), ("target", _fmt(res.target)),
            ("runtime", f"{rt.get('name', '-')} {rt.get('version', '')}".strip()),
            ("provider", _fmt(rt.get("provider"))),
            (f"metric {m.get('name', '?')}", f"{_fmt(m.get('value'))} (threshold {_fmt(m.get('threshold'))}) {verdict}")]
    rows += [(f"also {c.get('name')}", f"{_fmt(c.get('value'))} (threshold {_fmt(c.get('threshold'))}) "
              f"{'pass' if c.get('passed') else 'FAIL'}") for c in m.get("also") or []]
    rows += [(f"  {k}", _fmt(v)) for k, v in sorted(res.metrics.items())]
    if res.guard is not None:
        found = res.guard.get("findings") or []
        rows.append(("guards", "pass" if res.guard.get("passed") else f"FAIL ({len(found)} finding(s))"))
        rows += [("  guard", _device_text(f.get("message"))) for f in found[:10] if isinstance(f, dict)]
    # An emulated board (qemu-user) runs many times slower than the real one: say so on every figure.
    emu = " (emulated, not representative)" if res.device_facts.get("emulated") else ""
    rows += [("latency p50 / p90 / p99", f"{_fmt(lat.get('p50_ms'))} / {_fmt(lat.get('p90_ms'))} / {_fmt(lat.get('p99_ms'))} ms{emu}"),
             ("latency mean / min", f"{_fmt(lat.get('mean_ms'))} / {_fmt(lat.get('min_ms'))} ms{emu}"),
             ("first load", _fmt(lat.get("first_load_ms"), " ms") + emu),
             ("iterations", f"{_fmt(lat.get('iterations'))} in {_fmt(lat.get('window_s'), ' s')} ({_fmt(lat.get('repeat'))} window(s))"),
             ("peak RSS", _fmt(res.memory.get("peak_rss_mb"), " MB"))]
    if res.power is not None:
        from ..power.carbon import summary_rows

        if not res.power.get("sampler"):  # power.py missing or failed: nothing was sampled
            rows.append(("power", f"unavailable: {res.power.get('reason')}"))
        else:  # labelled rows: an estimate says so on its energy and carbon lines
            rows += _watt_rows(res.power, [(f"power: {label.strip().lower()}", value)
                                           for label, value in summary_rows(res.power)])
    rows.append(("result", str(res.result_path)))
    return rows


def format_watts(x: Any) -> str:
    """Power for people: 3.79e-05 W reads as 37.9 uW, 0.0123 W as 12.3 mW."""
    if not isinstance(x, (int, float)):
        return "n/a"
    for scale, unit in ((1.0, "W"), (1e-3, "mW"), (1e-6, "uW")):
        if abs(x) >= scale:
            return f"{x / scale:.3g} {unit}"
    return "0 W" if x == 0 else f"{x * 1e6:.2g} uW"


def _watt_rows(power: Dict[str, Any], rows: List[Tuple[str, str]]) -> List[Tuple[str, str]]:
    raw = {"mean power": power.get("mean_power_w"), "idle power": power.get("idle_power_w")}
    return [(k, format_watts(raw[k.split(": ", 1)[-1]]) if k.split(": ", 1)[-1] in raw else v) for k, v in rows]


def _select(config: Any, action: str, devices: Tuple[str, ...], group: Optional[str], inventory: Any,
            limit: Optional[str], retry_failed: bool, connect_timeout: Optional[float]) -> List[Any]:
    from .deploy import _select as select

    return select(config, action, devices, group, inventory, limit, retry_failed, connect_timeout)


def _missed(res: Any) -> str:
    m = res.metric
    missed = ([m] if not m.get("passed") else []) + [c for c in m.get("also") or [] if not c.get("passed")]
    what = [f"{c.get('name')} = {_fmt(c.get('value'))} misses the threshold {_fmt(c.get('threshold'))}" for c in missed]
    if res.guard is not None and not res.guard.get("passed", True):
        found = res.guard.get("findings") or []
        first = found[0].get("message") if found and isinstance(found[0], dict) else "?"
        what.append(f"guards failed: {' '.join(str(first).split())[:300]}"
                    + (f" (and {len(found) - 1} more)" if len(found) > 1 else ""))
    return "; ".join(what)


_inventory = click.option("--inventory", "-i", type=click.Path(path_type=Path), multiple=True,
                          help="An Ansible inventory (file or directory; repeatable) adding devices [default: deploy.inventory].")
_config = click.option("--config", "config_path", default="edgekit.toml", show_default=True, type=click.Path(dir_okay=False))


def register(main: click.Group) -> None:
    @main.command("validate")
    @host_options
    @_config
    @_inventory
    @click.option("--duration", default=2.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
                  help="Seconds per timed window (a window also ends after 10000 runs).")
    @click.option("--quick", is_flag=True, help="One short timed window (0.25 s, 2 warm-up runs, no idle baseline): "
                                                "proves the release runs and meets its metric; not for timing.")
    @click.option("--threads", default=None, type=int, help="Intra-op threads (default: the target profile's).")
    @click.option("--repeat", default=1, show_default=True, type=click.IntRange(min=1), help="Timed windows; the median is reported.")
    @click.option("--power", default=None, metavar="SAMPLER",
                  help="Power sampler: auto (the target's sensor, else a labelled estimate), none, or a name "
                       "(edgekit doctor lists them) [default: [power] sampler, else auto].")
    @click.option("--power-rate", default=None, type=float, metavar="HZ", help="Power samples per second, 1-100 [10].")
    @click.option("--idle", "idle_s", default=None, type=float, metavar="S", help="Seconds of idle baseline before the window [2].")
    @click.option("--requests-per-s", default=None, type=float, metavar="R", help="Request rate for the carbon-per-day figure [1].")
    @click.option("--grid-intensity", default=None, type=float, metavar="G",
                  help="Grid carbon intensity in gCO2e/kWh [481, world average 2023].")
    @click.option("--runs-dir", default=None, type=click.Path(file_okay=False), help="Where run files go [runs/ beside edgekit.toml].")
    @click.option("--max-result-mb", default=None, type=click.FloatRange(min=0, min_open=True), metavar="MB",
                  help="Largest result JSON fetched from the device [EDGEKIT_MAX_RESULT_MB, else 32].")
    @click.option("--accept-new-host-key", is_flag=True, help="Trust an SSH host key not yet in known_hosts.")
    @click.option("--engine", type=click.Choice(["builtin", "ansible"]), default="builtin", show_default=True,
                  help="Who does the work: edgekit's own threads over SSH, or Ansible (the edgekit.fleet collection).")
    @click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
    def validate_cmd(devices: Tuple[str, ...], group: Optional[str], limit: Optional[str], retry_failed: bool,
                     max_parallel: Optional[int], connect_timeout: Optional[float], config_path: str, inventory: Any,
                     duration: float, quick: bool, threads: Optional[int], repeat: int,
                     power: Optional[str], power_rate: Optional[float], idle_s: Optional[float],
                     requests_per_s: Optional[float], grid_intensity: Optional[float], runs_dir: Optional[str],
                     max_result_mb: Optional[float], accept_new_host_key: bool, engine: str, as_json: bool) -> None:
        """Run the deployed release on devices: accuracy vs reference, latency, power and carbon."""
        from ..config import load
        from ..fleet_engine import BuiltinEngine
        from ..fleet_results import ValidateOptions
        from ..validate import power_settings, validate_device

        config = load(config_path)
        hosts = _select(config, "validate", devices, group, inventory, limit, retry_failed, connect_timeout)
        settings = power_settings(config, sampler=power, rate_hz=power_rate, idle_s=idle_s,
                                  requests_per_s=requests_per_s, grid_g_per_kwh=grid_intensity)
        if not is_single(devices, group, limit, retry_failed) or engine == "ansible":
            options = ValidateOptions(duration=duration, quick=quick, threads=threads, repeat=repeat, power=settings,
                                      runs_dir=Path(runs_dir) if runs_dir else None, max_result_mb=max_result_mb,
                                      max_parallel=max_parallel or config.deploy.max_parallel,
                                      accept_new_host_key=accept_new_host_key)
            # A metric miss everywhere exits like a single device's (6); anything else is a device failure (8).
            if engine == "ansible":
                from ..engine_ansible_fleet import AnsibleEngine

                results = AnsibleEngine().validate(config, hosts, options)
            else:
                results = BuiltinEngine().validate(config, hosts, options)
            run_fleet("validate", config, hosts, results, as_json,
                      lambda run: AccuracyError.exit_code if all(r.error and r.error.kind == "metric" for r in
                                                                 run.results.values() if not r.ok) else DeviceError.exit_code,
                      engine=engine)
            return
        res = validate_device(config, hosts[0], duration=duration, threads=threads, repeat=repeat, quick=quick,
                              power=settings, accept_new_host_key=accept_new_host_key, runs_dir=runs_dir,
                              max_result_mb=max_result_mb)
        if as_json:
            echo_json(res)
        else:
            kv(f"validation on {res.device}", _validation_rows(res))
        if not res.ok:
            raise AccuracyError(f"device '{res.device}': " + _missed(res), hint=f"details in {res.result_path}")

    @main.command("doctor")
    @host_options
    @_config
    @_inventory
    @click.option("--accept-new-host-key", is_flag=True, help="Trust an SSH host key not yet in known_hosts.")
    @click.option("--json", "as_json", is_flag=True, help="Print facts and checks as JSON.")
    def doctor_cmd(devices: Tuple[str, ...], group: Optional[str], limit: Optional[str], retry_failed: bool,
                   max_parallel: Optional[int], connect_timeout: Optional[float], config_path: str, inventory: Any,
                   accept_new_host_key: bool, as_json: bool) -> None:
        """Probe devices (CPU, memory, disk, runtimes, JetPack, power sensors) against their targets."""
        from ..config import load
        from ..doctor import doctor_device
        from ..fleet_engine import BuiltinEngine

        config = load(config_path)
        hosts = _select(config, "doctor", devices, group, inventory, limit, retry_failed, connect_timeout)
        if not is_single(devices, group, limit, retry_failed):
            results = BuiltinEngine().doctor(config, hosts, max_parallel=max_parallel or config.deploy.max_parallel,
                                             accept_new_host_key=accept_new_host_key)
            run_fleet("doctor", config, hosts, results, as_json, DeviceError.exit_code)
            return
        report = doctor_device(config, hosts[0], accept_new_host_key=accept_new_host_key)
        if as_json:
            echo_json(report)
        else:
            marks = {"ok": "ok", "warn": "WARN", "fail": "FAIL"}
            table(f"doctor: {report.device} (target {report.target}, {report.transport}, {report.python})",
                  ["check", "status", "detail"], [(c.name, marks[c.status], c.message) for c in report.checks])
        if report.failures:
            raise DeviceError(f"device '{report.device}': {len(report.failures)} check(s) failed: "
                              + "; ".join(c.message for c in report.failures))

    @main.command("report")
    @click.argument("runs", nargs=-1, type=click.Path(exists=True))
    @click.option("--runs-dir", default="runs", show_default=True, type=click.Path(file_okay=False),
                  help="Where run files (and the release log, releases.jsonl) are, when no RUN is named.")
    @click.option("--out", "out_dir", default="reports", show_default=True, type=click.Path(file_okay=False))
    @click.option("--fail-on-failure", is_flag=True,
                  help="Exit non-zero when a device's current release fails (a rolled-back canary does not).")
    @click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
    def report_cmd(runs: Tuple[str, ...], runs_dir: str, out_dir: str, fail_on_failure: bool, as_json: bool) -> None:
        """Write an HTML report (inline plots), a Markdown summary and JSON from run files."""
        from ..report import build_report, failure, load_events, load_runs

        warn = lambda line: echo(f"warning: {line}", err=True)  # noqa: E731
        records = load_runs([Path(r) for r in runs], Path(runs_dir), warn=warn)
        res = build_report(records, Path(out_dir), events=load_events([Path(r) for r in runs], Path(runs_dir), warn=warn))
        error = failure(res) if fail_on_failure else None
        if as_json:
            echo_json(res)
            if error is not None:
                raise error
            return
        def _latency(r: Dict[str, Any], key: str) -> str:
            return _fmt(r[key]) + (" (emulated, not representative)" if r.get("emulated") and r.get(key) is not None else "")

        def energy(r: Dict[str, Any]) -> str:
            mj = r.get("energy_per_inference_mj")
            return "-" if mj is None else _fmt(mj) + (" (ESTIMATE)" if r.get("power_is_estimate") else "")

        table(f"{res.passed}/{len(res.devices)} device(s) passed ({res.runs} run(s))",
              ["device", "target", "release", "status", "metric", "value", "threshold", "p50 ms", "p99 ms", "mJ/inference"],
              [(r["device"], r.get("target"), r.get("release_id") or "-", r["status"], r.get("metric"), _fmt(r.get("value")),
                _fmt(r.get("threshold")), _latency(r, "p50_ms"), _latency(r, "p99_ms"), energy(r)) for r in res.summary])
        echo(f"wrote {res.html}\nwrote {res.markdown}\nwrote {res.json_path}")
        if error is not None:
            raise error
