"""``edgekit doctor``: probe a device and say where it does not match its target profile.

Probing (``run_probes``) reads files and runs commands through the transport; judging
(``evaluate``) is a pure function of the parsed facts and the profile, so it is tested on captured
outputs from real boards. A ``fail`` means validation cannot work (no numpy, no runtime, wrong
architecture); a ``warn`` means it works but not as the target intends (int8 without VNNI or
dot-product, a missing TensorRT provider, no power sensor).
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

from . import artifact
from .config import DeviceSpec, ProjectConfig
from .device import probes as P
from .errors import EdgekitError
from .targets import TargetProfile, load_all, resolve
from .transport import Transport, connect
from .validate import device_python

MIN_RUNNER_PYTHON = (3, 8)
LOW_MEMORY_MB = 256
LOW_DISK_MB = 500
UNREACHABLE = frozenset({"timeout", "unreachable", "host_key_unknown", "host_key_changed", "host_key_revoked",
                         "host_key_ca_unsupported", "auth", "handshake", "connection_lost"})
"""Error kinds that mean the device was never reached: doctor stops at the first and says so,
instead of blaming the interpreter for eight probes that never ran."""


class Check(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    status: Literal["ok", "warn", "fail"]
    message: str


class DoctorReport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    device: str
    target: str
    transport: str
    python: str
    facts: Dict[str, Any] = Field(default_factory=dict)
    """Probe name -> parsed value; ``{"error": ...}`` where the read or the parse failed."""
    checks: List[Check] = Field(default_factory=list)

    @property
    def warnings(self) -> List[Check]:
        return [c for c in self.checks if c.status == "warn"]

    @property
    def failures(self) -> List[Check]:
        return [c for c in self.checks if c.status == "fail"]

    @property
    def ok(self) -> bool:
        return not self.failures


def _first_line(text: str) -> str:
    lines = [ln.strip() for ln in (text or "").strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "no output"


def run_probe(conn: Transport, probe: P.Probe, python: str, arg: str = "") -> Any:
    """One read plus its parse. Returns the value, None for an absent optional file, or {"error"}."""
    try:
        res = conn.run(probe.argv(python=python, device_path=conn.root, arg=arg), timeout=120, cwd="/")
    except EdgekitError as exc:
        if exc.details.get("kind") in UNREACHABLE:
            raise
        return {"error": exc.message}
    if not res.ok:
        if probe.optional:
            return None
        return {"error": f"exit {res.returncode}: {_first_line(res.stderr or res.stdout)}"}
    try:
        return probe.parse(res.stdout)
    except Exception as exc:  # a parser failure is a fact to show, not a crash
        return {"error": f"cannot parse {probe.name} output: {exc}"}


def run_probes(conn: Transport, spec: DeviceSpec, profile: TargetProfile) -> Dict[str, Any]:
    python = device_python(spec)
    facts: Dict[str, Any] = {}
    for name, probe in P.PROBES.items():
        if name == "power":
            continue
        arg = "jetson" if (name == "python" and profile.family == "jetson") else ""
        facts[name] = run_probe(conn, probe, python, arg)
    # The sensors are the device package's: ship it as a release holds it and ask it directly.
    try:
        with tempfile.TemporaryDirectory() as tmp:
            artifact.copy_device_files(Path(tmp))
            for p in sorted(Path(tmp).rglob("*.py")):
                conn.put(p, f".edgekit/probe/{p.relative_to(tmp).as_posix()}")
        facts["power"] = run_probe(conn, P.PROBES["power"], python, "/")
        if facts["power"] is None:
            facts["power"] = {"error": "power.available_samplers failed on the device"}
    except EdgekitError as exc:
        if exc.details.get("kind") in UNREACHABLE:
            raise
        facts["power"] = {"error": exc.message}
    return facts


def _ok(value: Any) -> bool:
    return isinstance(value, dict) and "error" not in value


def _norm_arch(machine: Optional[str]) -> Optional[str]:
    if not machine:
        return None
    m = machine.lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(m, m)


def _better_target(profile: TargetProfile, flags: set, profiles: Dict[str, TargetProfile]) -> Optional[str]:
    """The richest profile of the same family and arch whose ISA features this CPU has."""
    fits = [p for p in profiles.values() if p.family == profile.family and p.arch == profile.arch
            and set(p.isa_features) <= flags and p.name != profile.name]
    fits.sort(key=lambda p: -len(p.isa_features))
    return fits[0].name if fits else None


def _version_tuple(v: str) -> tuple:
    return tuple(int(x) for x in v.split(".")[:2] if x.isdigit())


def evaluate(profile: TargetProfile, facts: Dict[str, Any], python: str = "python3",
             profiles: Optional[Dict[str, TargetProfile]] = None) -> List[Check]:
    """Judge the probed facts against the target profile (pure: no I/O but loading profiles)."""
    profiles = profiles if profiles is not None else load_all()
    checks: List[Check] = []

    def add(name: str, status: str, message: str) -> None:
        checks.append(Check(name=name, status=status, message=message))  # type: ignore[arg-type]

    py = facts.get("python")
    if not _ok(py):
        add("python", "fail", f"cannot run the device interpreter '{python}': {(py or {}).get('error', 'no answer')}"
                              " (set devices.python in edgekit.toml)")
        py = {}
    else:
        version = py.get("version", "0.0")
        if _version_tuple(version) < MIN_RUNNER_PYTHON:
            add("python", "fail", f"{python} is Python {version}; runner.py needs 3.8 or newer")
        elif _version_tuple(version) < _version_tuple(profile.min_python):
            add("python", "warn", f"{python} is Python {version}; target {profile.name} expects {profile.min_python}+")
        else:
            add("python", "ok", f"{python} is Python {version} ({py.get('executable')})")
        numpy = py.get("numpy") or {}
        if "error" in numpy:
            add("numpy", "fail", f"{python} cannot import numpy ({numpy['error']}); pip install numpy")
        else:
            add("numpy", "ok", f"numpy {numpy.get('version')}")
        if profile.runtime.name == "onnxruntime":
            ort = py.get("onnxruntime") or {}
            if "error" in ort:
                add("runtime", "fail", f"{python} cannot import onnxruntime ({ort['error']}); the runner needs it"
                                       + (" (on Jetson: NVIDIA's onnxruntime-gpu wheel for your JetPack)" if profile.family == "jetson" else ""))
            else:
                add("runtime", "ok", f"onnxruntime {ort.get('version')}, providers: {', '.join(ort.get('providers', []))}")
                available = set(ort.get("providers", []))
                for wanted in profile.runtime.providers:
                    if wanted not in available:
                        add("providers", "warn", f"{wanted} is not in this onnxruntime build; the runner falls back to "
                                                 f"the next provider ({', '.join(p for p in profile.runtime.providers if p in available) or 'CPUExecutionProvider'})")
        else:
            tfl = [k for k in ("tflite_runtime", "ai_edge_litert") if "error" not in (py.get(k) or {"error": 1})]
            if not tfl:
                add("runtime", "fail", f"{python} can import neither tflite_runtime nor ai_edge_litert; pip install ai-edge-litert")
            else:
                add("runtime", "ok", f"{tfl[0]} {py[tfl[0]].get('version')}")

    if py:
        found = [f"{k} {py[k].get('version')}" for k in ("onnxruntime", "tflite_runtime", "ai_edge_litert")
                 if isinstance(py.get(k), dict) and "error" not in py[k]]
        add("runtimes", "ok" if found else "warn",
            "installed: " + ", ".join(found) if found else "none of onnxruntime, tflite_runtime, ai_edge_litert")

    cpu = facts.get("cpuinfo") if _ok(facts.get("cpuinfo")) else {}
    lscpu = facts.get("lscpu") if _ok(facts.get("lscpu")) else {}
    flags = set(cpu.get("flags") or []) or set(lscpu.get("flags") or [])
    machine = _norm_arch(py.get("machine") or cpu.get("arch") or lscpu.get("arch"))
    if machine and machine != profile.arch:
        if machine.startswith("armv") and profile.arch == "aarch64":
            add("arch", "fail", f"the device runs a 32-bit ({machine}) userland; target {profile.name} needs a 64-bit "
                                "(aarch64) OS for its runtime wheels")
        else:
            add("arch", "fail", f"the device is {machine} but target {profile.name} is built for {profile.arch}")
    elif machine:
        add("arch", "ok", f"{machine}, {cpu.get('model') or lscpu.get('model') or 'unknown CPU'}, "
                          f"{cpu.get('cores') or lscpu.get('cores') or '?'} cores")
    isa = P.isa_summary(sorted(flags))
    if flags:
        missing = [f for f in profile.isa_features if f not in flags]
        if missing:
            better = _better_target(profile, flags, profiles)
            add("isa", "warn", f"this CPU lacks {', '.join(missing)}, which target {profile.name} relies on"
                               + (f"; build for target {better} instead" if better else ""))
        else:
            add("isa", "ok", f"CPU has {', '.join(profile.isa_features) or 'the baseline ISA'}")
        deployed = facts.get("deployed") if _ok(facts.get("deployed")) else {}
        int8 = deployed.get("precision") == "int8" if deployed else "int8" in profile.quantization.precisions
        covered = set(missing)
        if int8 and profile.arch == "aarch64" and not isa["dotprod"] and "asimddp" not in covered:
            add("int8", "warn", "int8 build on an ARM CPU without dot-product (asimddp): int8 GEMM gains little over "
                                "fp32 here; compare with --precision fp32")
        if int8 and profile.arch == "x86_64" and not isa["vnni"] and not profile.quantization.reduce_range \
                and not covered & {"avx512_vnni", "avx_vnni"}:
            add("int8", "warn", "int8 build without VNNI: u8/s8 products can saturate (VPMADDUBSW); build with "
                                "reduce_range (target x86-avx2)")
        if isa["i8mm"] and profile.arch == "aarch64":
            add("int8", "ok", "CPU has i8mm (SMMLA/UMMLA) for int8 matrix multiply")
        arm = (machine or profile.arch) == "aarch64" or (machine or "").startswith("armv")
        shown = ("dotprod", "i8mm", "fp16") if arm else ("avx2", "avx512", "vnni", "amx_int8")
        add("cpu flags", "ok", "int8/fp16 features: " + ", ".join(f"{k} {'yes' if isa[k] else 'no'}" for k in shown))
    else:
        add("isa", "warn", "CPU flags unknown (neither /proc/cpuinfo nor lscpu answered)")

    deployed = facts.get("deployed")
    if _ok(deployed) and deployed.get("target") and deployed["target"] != profile.name:
        add("release", "warn", f"the deployed release {deployed.get('release_id')} was built for {deployed['target']}, "
                               f"not for the device's target {profile.name}")

    osr = facts.get("os_release")
    if _ok(osr) and osr.get("pretty_name"):
        add("os", "ok", str(osr["pretty_name"]))

    tegra = facts.get("tegra")
    if _ok(tegra):
        jp = tegra.get("jetpack") or (f"{tegra['jetpack_major']}.x" if tegra.get("jetpack_major") else "unknown")
        add("jetpack", "ok", f"L4T {tegra['l4t']} (JetPack {jp})")
    elif profile.family == "jetson":
        add("jetpack", "warn", "no /etc/nv_tegra_release: not a Jetson, or L4T is not installed")

    mem = facts.get("meminfo")
    if _ok(mem):
        status = "warn" if mem["available_mb"] < LOW_MEMORY_MB else "ok"
        add("memory", status, f"{mem['available_mb']} MB available of {mem['total_mb']} MB")
    disk = facts.get("disk")
    if _ok(disk):
        status = "warn" if disk["available_mb"] < LOW_DISK_MB else "ok"
        add("disk", status, f"{disk['available_mb']} MB free on {disk['mount']} ({disk['use_percent']}% used)")

    power = facts.get("power")
    if isinstance(power, dict) and "error" in power:
        add("power", "warn", f"power sensors not probed: {power['error']}")
    elif isinstance(power, list):
        names = [str(n) for n in power]
        measured = [n for n in names if n != "estimate"]
        if not measured:
            add("power", "warn", "no power sensor found; energy figures will be CPU-time estimates")
        elif profile.power_sensor != "estimate" and profile.power_sensor not in names:
            add("power", "warn", f"target {profile.name} expects the {profile.power_sensor} sensor; found: {', '.join(names)}")
        else:
            add("power", "ok", f"power samplers: {', '.join(names)}")
    return checks


def doctor_device(config: ProjectConfig, device: Union[str, DeviceSpec], *, transport: Optional[Transport] = None,
                  accept_new_host_key: bool = False) -> DoctorReport:
    spec = config.device(device) if isinstance(device, str) else device
    profile = resolve(spec.target, project_dirs=config.target_dirs())
    own = transport is None
    conn = transport or connect(spec, config, accept_new_host_key=accept_new_host_key)
    try:
        facts = run_probes(conn, spec, profile)
    finally:
        if own:
            conn.close()
    python = device_python(spec)
    return DoctorReport(device=spec.name, target=profile.name, transport=spec.transport, python=python,
                        facts=facts, checks=evaluate(profile, facts, python=python))
