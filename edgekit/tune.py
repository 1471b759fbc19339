"""``edgekit build --tune-on DEVICE``: the device decides between the candidates that passed on the host.

After the host's accuracy work, the candidates that met the metric and passed the guards go to the
device in one content-addressed upload; one invocation of ``device/tune.py`` scores each against
the reference outputs (guards included), times them interleaved (spinning off, an A/A twin of the
control, warm-up, rounds until every median is stable) and meters energy where the device has a
sensor. The host chooses by the objective among those that passed on the device too, and the
manifest's ``tuning`` section records what was measured and why the choice fell as it did.

Measurements are cached (``<out>/.tune/<key>.json``) under a key of what decides them: the
device's CPU model and features, the runtime's version and providers, the exact candidate files
and their session recipe, the reference and the timing settings. A second identical board reuses
the first one's measurement and says so; ``--retune`` measures again.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from .errors import ConfigError, DeviceError
from .tune_check import checked_facts, checked_result
from .tune_choose import choose, host_choice

OBJECTIVES = ("latency", "p99", "energy")
CACHE_SCHEMA = 1
TIMING = {"warmup": 10, "per_round": 3, "min_rounds": 9, "max_rounds": 80, "budget_s": 40.0, "rel_tol": 0.02,
          "window": 3, "min_samples": 200}
"""Interleaved rounds until every running median (the A/A twin's included) moved less than 2% over the
last 3 rounds and every candidate has 200 timed runs (for a p99 that means something), within 40 s."""
POWER = {"sampler": "auto", "duration_s": 2.0, "idle_s": 1.0, "rate_hz": 50.0}
Say = Callable[[str], None]


@dataclass
class TuneOptions:
    device: str
    objective: str = "latency"
    max_p50_ms: Optional[float] = None
    max_p99_ms: Optional[float] = None
    retune: bool = False
    allow_emulated: bool = False
    """For tests only: time on an emulated board anyway (its latency is qemu's, not the board's)."""
    sysfs_root: Optional[str] = None
    """For tests: where the device's power sensors are read (a simulated sysfs tree)."""
    timeout_s: float = 900.0
    prune: bool = True
    """Latency pruning on the device: each int8 candidate's op-type groups reverted to float, timed beside it."""
    spec: Optional[Any] = None
    preflight_cost: Optional[Dict[str, Any]] = None
    """What the preflight (:func:`preflight`) sent and took, added to the tuning's cost."""
    """The device itself, where it comes from an inventory rather than edgekit.toml (fleets)."""
    budget_s: float = 40.0
    """Seconds the device may spend on the interleaved rounds (it stops earlier once the medians are stable)."""

    def check(self) -> None:
        """One line per mistake, before anything is built."""
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"--objective: expected one of {', '.join(OBJECTIVES)}, got '{self.objective}'")
        for flag, value in (("--max-p50-ms", self.max_p50_ms), ("--max-p99-ms", self.max_p99_ms)):
            if value is not None and not (0 < value < 1e7):
                raise ConfigError(f"{flag}: expected a positive number of milliseconds, got {value}")
        if not (0 < self.budget_s <= 3600):
            raise ConfigError(f"--tune-budget: expected seconds in (0, 3600], got {self.budget_s}")
        if self.max_p50_ms is not None and self.objective != "energy":
            raise ConfigError("--max-p50-ms constrains the energy objective (the lowest energy whose p50 <= X ms); "
                              "with --objective latency use --max-p99-ms, or --objective energy")
        if self.max_p99_ms is not None and self.objective != "latency":
            raise ConfigError("--max-p99-ms constrains the latency objective (the fastest whose p99 <= X ms); "
                              "use it with --objective latency")

    def describe(self) -> str:
        if self.max_p99_ms is not None:
            return f"latency (p50) with p99 <= {self.max_p99_ms:g} ms"
        if self.max_p50_ms is not None:
            return f"energy (mJ per inference above idle) with p50 <= {self.max_p50_ms:g} ms"
        return {"latency": "latency (p50)", "p99": "latency (p99)",
                "energy": "energy (mJ per inference above idle)"}[self.objective]


def tunable(q: Any) -> List[Any]:
    """The candidates the host allows to ship (met the metric, guards passed, not refused), FP32 always
    (the A/A control, and a choice only when it met the metric itself), in the host's order."""
    from .quantize import registry

    files = q.candidate_files
    out = [c for c in q.candidates
           if c.name in files and ((c.passed and not c.refused) or registry.is_reference(c.precision))]
    if not any(registry.is_reference(c.precision) for c in out) and "fp32" not in files:
        raise ConfigError("--tune-on compares candidates against FP32 (its A/A control), and this build made none: "
                          "use --precision auto, with fp32 among the profile's precisions")
    return out


def _check_device(facts: Dict[str, Any], profile: Any, opts: TuneOptions, name: str, say: Say) -> None:
    dev = facts["device"]
    emulated = dev.get("emulated")
    if emulated:
        how = f"qemu-user, QEMU_CPU={emulated.get('qemu_cpu')}" if isinstance(emulated, dict) else "emulated"
        if not opts.allow_emulated:
            raise DeviceError(f"device '{name}' is emulated ({how}): its latency is the emulator's, not the board's, "
                              "so it cannot choose a model", hint="tune on the real board; --tune-allow-emulated "
                              "exists for tests of the mechanism only")
        say(f"tuning on emulated device '{name}' ({how}) because --tune-allow-emulated was given: its timings "
            "are the emulator's, for tests only")
    machine = str(dev.get("machine", ""))
    arch = {"amd64": "x86_64", "arm64": "aarch64"}.get(machine.lower(), machine.lower())
    if arch != profile.arch:
        raise DeviceError(f"device '{name}' is {machine or 'of unknown architecture'}, target {profile.name} is "
                          f"{profile.arch}: timings there say nothing about the target",
                          hint="tune on a device of the target's kind")
    have = set(dev.get("cpu_features") or [])
    missing = sorted(set(profile.isa_features) - have)
    if missing and not opts.allow_emulated:
        raise DeviceError(f"device '{name}' lacks {', '.join(missing)}, which target {profile.name} relies on: "
                          "its int8 kernels are not the target's", hint="tune on a device with the target's CPU")
    if profile.is_gpu:
        providers = facts["runtime"].get("providers") or []
        if profile.runtime.providers[0] not in providers:
            say(f"device '{name}' lacks {profile.runtime.providers[0]}: candidates run on {', '.join(providers)}")
    if opts.objective == "energy" and not facts.get("power_sensors"):
        raise DeviceError(f"device '{name}' has no power sensor, only the CPU-time estimate, which is not a "
                          "measurement: --objective energy cannot be measured there",
                          hint="use --objective latency or p99, or a board with a sensor (edgekit doctor lists them)")


def cache_key(facts: Dict[str, Any], plan: Dict[str, Any], sums: Dict[str, str]) -> str:
    dev, rt = facts["device"], facts["runtime"]
    key = {"schema": CACHE_SCHEMA, "cpu_model": dev.get("cpu_model"), "cpu_core": dev.get("cpu_core"),
           "cpu_features": sorted(str(f) for f in dev.get("cpu_features") or []), "machine": dev.get("machine"),
           "cpu_count": dev.get("cpu_count"), "runtime": rt.get("version"), "providers": rt.get("providers"),
           "sensors": facts.get("power_sensors"), "files": sums, "threads": plan["threads"],
           "runtime_plan": plan["runtime"], "timing": plan["timing"], "power": plan["power"],
           "candidates": [{k: c[k] for k in sorted(c) if k != "path"} for c in plan["candidates"]],
           "metric": plan["manifest"]["metric"], "guard": plan["manifest"].get("guard")}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


def _cache_read(path: Path) -> Optional[Dict[str, Any]]:
    try:
        if path.stat().st_size > (32 << 20):
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("schema") == CACHE_SCHEMA else None


def _cache_write(path: Path, data: Dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.part")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True), encoding="utf-8")
    os.replace(tmp, path)


def make_plan(q: Any, profile: Any, cands: List[Any], manifest: Dict[str, Any], paths: Dict[str, str],
              reference: str, power: Dict[str, Any], bars: Optional[Dict[str, float]] = None,
              budget_s: float = TIMING["budget_s"]) -> Dict[str, Any]:
    from .build import _manifest_runtime
    from .quantize import registry
    from .quantize.presets import DISABLED_OPTIMIZERS, runtime_level_for

    runtime = _manifest_runtime(profile, "onnxruntime", "basic", "fp32")
    plan_cands = []
    for c in cands:
        rt = _manifest_runtime(profile, "onnxruntime", runtime_level_for(c.method, profile), c.precision)
        plan_cands.append({"name": c.name, "precision": c.precision, "method": c.method, "path": paths[c.name],
                           "graph_optimization": rt["graph_optimization"], "provider_options": rt["provider_options"],
                           "disabled_optimizers": (list(DISABLED_OPTIMIZERS) if registry.is_integer(c.precision)
                                                   else [])})
        if bars and c.name in bars:  # the device scores a subset: this candidate's host score on it
            plan_cands[-1]["host_value"] = bars[c.name]
    return {"schema": 1, "threads": profile.intra_op_threads, "runtime": {"providers": runtime["providers"]},
            "candidates": plan_cands, "control": "fp32", "reference": reference, "manifest": manifest,
            "timing": dict(TIMING, budget_s=budget_s), "power": power}


def preflight(config: Any, profile: Any, opts: TuneOptions, say: Say) -> None:
    """Ask the device what it is before the host's minutes of accuracy work: an emulated board, the
    wrong architecture or an energy objective without a sensor is refused first."""
    from .transport import connect
    from .tune_device import device_code, open_link

    spec = opts.spec or config.device(opts.device)
    say(f"asking '{spec.name}' what it is (--tune-on)")
    conn = connect(spec, config)
    link = open_link(conn, spec)
    try:
        t0 = time.perf_counter()
        with device_code(config.plugin_files()) as code:
            link.push(code, list(code), data=False)
        _check_device(checked_facts(link.facts(opts.sysfs_root), spec.name), profile, opts, spec.name, lambda _m: None)
        opts.preflight_cost = {"seconds": time.perf_counter() - t0, "bytes_sent": link.bytes_sent,
                               "files_sent": link.files_sent}
    finally:
        link.cleanup()
        conn.close()


def tune(q: Any, profile: Any, config: Any, manifest: Dict[str, Any], reference: Path, out_dir: Path,
         opts: TuneOptions, say: Say, bars: Optional[Dict[str, float]] = None,
         variants: Optional[List[str]] = None) -> Tuple[str, Dict[str, Any], Dict[str, Any]]:
    """(the chosen candidate's name, the manifest's ``tuning`` section, this run's cost and reuse). ``manifest`` holds what
    the device needs to score (inputs, outputs, metric, guard, reference, target_profile)."""
    from .transport import connect
    from .tune_device import device_code, now, open_link

    spec = opts.spec or config.device(opts.device)
    cands = tunable(q)
    t0 = time.perf_counter()
    conn = connect(spec, config)
    link = open_link(conn, spec)
    try:
        with device_code(config.plugin_files()) as code:
            link.push(code, list(code), data=False)
        facts = checked_facts(link.facts(opts.sysfs_root), spec.name)
        _check_device(facts, profile, opts, spec.name, say)
        files = {c.name: Path(q.candidate_files[c.name]) for c in cands}
        from .tune_device import sha256_file

        sums = {n: sha256_file(p) for n, p in files.items()}
        sums["reference.npz"] = sha256_file(reference)
        # a project's own metric scores on the device too: another version of its file, another measurement
        sums.update({f"plugin:{p.name}": sha256_file(p) for p in config.plugin_files()})
        placeholder = {n: "" for n in files}
        power = dict(POWER, sampler="auto" if facts.get("power_sensors") else "none")
        plan = make_plan(q, profile, cands, manifest, placeholder, "", power, bars, opts.budget_s)
        key = cache_key(facts, plan, sums)
        cache_path = Path(out_dir) / ".tune" / f"{key}.json"
        cached = None if opts.retune else _cache_read(cache_path)
        if cached is not None:
            result, measured = cached["result"], cached["measured"]
            say(f"reusing the tuning measured on '{measured['device']}' at {measured['at']}: the same CPU "
                f"({facts['device'].get('cpu_model') or facts['device'].get('cpu_core')}), runtime and candidate "
                "files (--retune measures again)")
        else:
            say(f"sending {len(cands)} candidates to '{spec.name}' (files it already holds are not sent again)")
            paths = link.push({**files, "reference.npz": Path(reference)})
            plan = make_plan(q, profile, cands, manifest, {n: conn.path(paths[n]) for n in files},
                             conn.path(paths["reference.npz"]), power, bars, opts.budget_s)
            result = checked_result(link.measure(plan, say, opts.timeout_s, opts.sysfs_root), [c.name for c in cands],
                                    spec.name)
            measured = {"device": spec.name, "at": now()}
            _cache_write(cache_path, {"schema": CACHE_SCHEMA, "key": key, "measured": measured, "result": result,
                                      "facts": facts})
        pre = opts.preflight_cost or {}
        cost = {"seconds": round(time.perf_counter() - t0 + pre.get("seconds", 0.0), 3),
                "bytes_sent": link.bytes_sent + pre.get("bytes_sent", 0),
                "files_sent": link.files_sent + pre.get("files_sent", 0), "files_reused": link.files_reused}
    finally:
        link.cleanup()
        conn.close()
    chosen, reason, table = choose(q, cands, result, opts)
    from .tune_prune import record as prune_record
    facts_dev = facts["device"]
    section = {
        "device": spec.name,
        "facts": {"cpu_model": facts_dev.get("cpu_model"), "cpu_core": facts_dev.get("cpu_core"),
                  "machine": facts_dev.get("machine"), "cpu_features": facts_dev.get("cpu_features"),
                  "emulated": bool(facts_dev.get("emulated")),
                  "runtime": facts["runtime"].get("name"), "runtime_version": facts["runtime"].get("version"),
                  "providers_available": facts["runtime"].get("providers"),
                  "power_sensors": facts.get("power_sensors") or []},
        "objective": opts.describe(),
        "objective_name": opts.objective,
        "constraint": ({"max_p99_ms": opts.max_p99_ms} if opts.max_p99_ms is not None else
                       {"max_p50_ms": opts.max_p50_ms} if opts.max_p50_ms is not None else None),
        "method": result["timing"],
        "candidates": table,
        "chosen": chosen,
        "host_choice": host_choice(q),
        "reason": reason,
        "measured": measured,
        "cache_key": key,
    }
    if variants:
        section["latency_pruning"] = prune_record(result, variants, result["timing"]["noise_floor"])
    # what this run cost and whether it measured at all vary between builds: the build record's
    run = dict(cost, reused=cached is not None, tuned_on=spec.name)
    return chosen, section, run

