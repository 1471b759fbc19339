"""Device probes for ``edgekit doctor``: each one is a read (a file to cat, or a command) plus a
pure ``parse(text)``.

The reads run through a Transport, so the same probes work on a local directory and over SSH. The
parsers take the captured text only; ``tests/probe_cases/*.json`` feeds them real outputs captured
from Raspberry Pi 4/5, Jetson (Nano, Orin), and x86 servers (pyinfra's FactBase.command + process()).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence

# ARM "CPU part" numbers (MIDR) for implementer 0x41 (Arm) that edge boards carry.
ARM_PARTS: Dict[str, str] = {
    "0xd03": "Cortex-A53", "0xd04": "Cortex-A35", "0xd05": "Cortex-A55", "0xd07": "Cortex-A57",
    "0xd08": "Cortex-A72", "0xd09": "Cortex-A73", "0xd0a": "Cortex-A75", "0xd0b": "Cortex-A76",
    "0xd0c": "Neoverse-N1", "0xd0d": "Cortex-A77", "0xd41": "Cortex-A78", "0xd42": "Cortex-A78AE",
    "0xd44": "Cortex-X1", "0xd46": "Cortex-A510", "0xd47": "Cortex-A710", "0xd4b": "Cortex-A78C",
}

# L4T release -> JetPack release (NVIDIA's published pairs; unknown pairs stay None).
L4T_TO_JETPACK: Dict[str, str] = {
    "32.7.1": "4.6.1", "32.7.2": "4.6.2", "32.7.3": "4.6.3", "32.7.4": "4.6.4", "32.7.5": "4.6.5", "32.7.6": "4.6.6",
    "35.1.0": "5.0.2", "35.2.1": "5.1", "35.3.1": "5.1.1", "35.4.1": "5.1.2", "35.5.0": "5.1.3", "35.6.0": "5.1.4",
    "35.6.1": "5.1.5",
    "36.2.0": "6.0 DP", "36.3.0": "6.0", "36.4.0": "6.1", "36.4.3": "6.2", "36.4.4": "6.2.1",
}


def _kv_blocks(text: str) -> List[Dict[str, str]]:
    """``key : value`` lines, split into blocks at blank lines (one block per processor)."""
    blocks: List[Dict[str, str]] = [{}]
    for line in text.splitlines():
        if not line.strip():
            if blocks[-1]:
                blocks.append({})
            continue
        key, sep, value = line.partition(":")
        if sep:
            blocks[-1][key.strip()] = value.strip()
    return [b for b in blocks if b]


def isa_summary(flags: Sequence[str]) -> Dict[str, bool]:
    """The int8-relevant features, named the way the runtimes' kernels care about them."""
    f = set(flags)
    return {
        "avx2": "avx2" in f,
        "avx512": "avx512f" in f and "avx512bw" in f,
        "vnni": bool({"avx512_vnni", "avx_vnni"} & f),  # VPDPBUSD, 512- or 256-bit
        "amx_int8": "amx_int8" in f,
        "dotprod": "asimddp" in f,  # SDOT/UDOT (ARMv8.2+)
        "i8mm": "i8mm" in f,  # SMMLA/UMMLA (ARMv8.6)
        "fp16": "asimdhp" in f or "avx512_fp16" in f,
    }


def parse_cpuinfo(text: str) -> Dict[str, Any]:
    """/proc/cpuinfo of x86 (``model name``/``flags``) or ARM (``CPU part``/``Features``)."""
    blocks = _kv_blocks(text)
    procs = [b for b in blocks if "processor" in b]
    flags: List[str] = []
    parts: List[str] = []
    model: Optional[str] = None
    board: Optional[str] = None
    for b in blocks:
        for key in ("flags", "Features"):
            for flag in b.get(key, "").split():
                if flag not in flags:
                    flags.append(flag)
        part = b.get("CPU part")
        if part and b.get("CPU implementer", "0x41") == "0x41" and part not in parts:
            parts.append(part)
        model = model or b.get("model name")
        board = board or b.get("Model")
    named = [ARM_PARTS.get(p, f"part {p}") for p in parts]
    # ARM kernels print "ARMv8 Processor rev 0 (v8l)" or nothing as the model name: the part is better.
    if named and (model is None or model.startswith("ARMv")):
        model = " + ".join(named)
    arch = None
    if any("CPU architecture" in b for b in blocks):
        arch_no = next(b["CPU architecture"] for b in blocks if "CPU architecture" in b)
        arch = "armv7l" if arch_no == "7" else "aarch64"  # a v8 core under a 32-bit kernel says 7
    elif any("vendor_id" in b for b in blocks):
        arch = "x86_64"
    return {"model": model, "board": board, "cores": len(procs) or None, "arch": arch, "arm_parts": parts,
            "flags": sorted(flags), "isa": isa_summary(flags)}


def parse_lscpu(text: str) -> Dict[str, Any]:
    """``lscpu`` (util-linux): names the ARM core itself and works where /proc/cpuinfo is terse."""
    fields: Dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() and key.strip() not in fields:
            fields[key.strip()] = value.strip()
    flags = fields.get("Flags", "").split()
    cpus = fields.get("CPU(s)")
    return {"model": fields.get("Model name"), "arch": fields.get("Architecture"),
            "cores": int(cpus) if cpus and cpus.isdigit() else None, "flags": sorted(set(flags)),
            "isa": isa_summary(flags)}


def parse_meminfo(text: str) -> Dict[str, Any]:
    """/proc/meminfo in MB. Kernels before 3.14 lack MemAvailable: estimate free + buffers + cached."""
    kb: Dict[str, int] = {}
    for line in text.splitlines():
        m = re.match(r"^([\w()]+):\s+(\d+)", line)
        if m:
            kb[m.group(1)] = int(m.group(2))
    if "MemTotal" not in kb:
        raise ValueError("no MemTotal line")
    estimated = "MemAvailable" not in kb
    avail = kb.get("MemAvailable", kb.get("MemFree", 0) + kb.get("Buffers", 0) + kb.get("Cached", 0))
    return {"total_mb": kb["MemTotal"] // 1024, "available_mb": avail // 1024,
            "swap_total_mb": kb.get("SwapTotal", 0) // 1024, "available_estimated": estimated}


def parse_df(text: str) -> Dict[str, Any]:
    """``df -Pk PATH``: POSIX format, 1024-byte blocks, one line per filesystem (last one wins).

    Columns are read from the right, because the filesystem name may hold spaces (CIFS shares).
    """
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    if len(lines) < 2 or not lines[0].startswith("Filesystem"):
        raise ValueError("not df -P output")
    m = re.match(r"^(.*\S)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)%\s+(/.*)$", lines[-1])
    if not m:
        raise ValueError(f"cannot parse df line: {lines[-1]!r}")
    block = 512 if "512-blocks" in lines[0] else 1024
    total, used, avail = (int(m.group(i)) * block // (1024 * 1024) for i in (2, 3, 4))
    return {"filesystem": m.group(1), "total_mb": total, "used_mb": used, "available_mb": avail,
            "use_percent": int(m.group(5)), "mount": m.group(6)}


def parse_nv_tegra_release(text: str) -> Dict[str, Any]:
    """/etc/nv_tegra_release: ``# R35 (release), REVISION: 4.1, GCID: ..., BOARD: ..., ...``."""
    first = next((ln for ln in text.splitlines() if ln.strip()), "")
    m = re.search(r"R(\d+)\s*\(\w+\),\s*REVISION:\s*([\d.]+)", first)
    if not m:
        raise ValueError(f"not an L4T release line: {first!r}")
    revision = m.group(2)
    l4t = f"{m.group(1)}.{revision}" + (".0" if revision.count(".") == 0 else "")
    board = re.search(r"BOARD:\s*([^,]+)", first)
    return {"l4t": l4t, "major": int(m.group(1)), "jetpack": L4T_TO_JETPACK.get(l4t),
            "jetpack_major": 4 if int(m.group(1)) == 32 else 5 if int(m.group(1)) in (34, 35) else 6 if int(m.group(1)) == 36 else None,
            "board": board.group(1).strip() if board else None, "raw": first.strip()}


def parse_os_release(text: str) -> Dict[str, Any]:
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            fields[key.strip()] = value.strip().strip('"')
    return {"pretty_name": fields.get("PRETTY_NAME"), "id": fields.get("ID"), "version_id": fields.get("VERSION_ID")}


def parse_json_line(text: str) -> Any:
    """The last line of stdout that is a JSON document (library banners may precede it)."""
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{") or line.startswith("["):
            return json.loads(line)
    raise ValueError("no JSON line in the output")


def parse_manifest(text: str) -> Dict[str, Any]:
    """The deployed release's manifest.json: which target and precision are current."""
    data = json.loads(text)
    return {"release_id": data.get("release_id"), "target": data.get("target"), "model": data.get("model"),
            "precision": (data.get("quantization") or {}).get("precision"),
            "runtime": (data.get("runtime") or {}).get("name", "onnxruntime")}


# Runs under the device interpreter (DeviceSpec.python); Python 3.8 syntax, standard library only.
PYTHON_PROBE = r"""
import json, platform, sys
out = {"version": platform.python_version(), "executable": sys.executable, "machine": platform.machine()}
def probe(name, extra=None):
    try:
        mod = __import__(name, fromlist=["_"])
    except Exception as exc:
        return {"error": "%s: %s" % (type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")}
    info = {"version": getattr(mod, "__version__", None)}
    if extra is not None:
        try:
            info.update(extra(mod))
        except Exception as exc:
            info["error"] = str(exc)
    return info
out["numpy"] = probe("numpy")
out["onnxruntime"] = probe("onnxruntime", lambda m: {"providers": m.get_available_providers()})
out["tflite_runtime"] = probe("tflite_runtime")
out["ai_edge_litert"] = probe("ai_edge_litert")
if len(sys.argv) > 1 and sys.argv[1] == "jetson":
    out["tensorrt"] = probe("tensorrt")
print(json.dumps(out))
"""

# The sensor registry's own discovery, run over an uploaded copy of the device package laid out as a
# release holds it: argv = [dir, sysfs root].
POWER_PROBE = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from edgekit.device import power
print(json.dumps(power.available_samplers(sys.argv[2]), default=str))
"""

DF_SCRIPT = 'd="$1"; while [ ! -e "$d" ] && [ "$d" != "/" ]; do d=$(dirname "$d"); done; df -Pk "$d"'


@dataclass(frozen=True)
class Probe:
    """What to read on the device and how to parse it. ``command`` may hold ``{python}``,
    ``{path}`` (the device directory) and ``{arg}`` placeholders, filled in by ``argv``."""

    name: str
    parse: Callable[[str], Any]
    path: Optional[str] = None
    command: Optional[Sequence[str]] = None
    optional: bool = False
    """A missing file (no /etc/nv_tegra_release off Jetson) is a normal absence, not an error."""

    def argv(self, python: str = "python3", device_path: str = ".", arg: str = "") -> List[str]:
        if self.path is not None:
            return ["cat", self.path]
        assert self.command is not None
        # str.replace, not str.format: the inline scripts are full of dict braces.
        return [c.replace("{python}", python).replace("{path}", device_path).replace("{arg}", arg)
                for c in self.command]


PROBES: Dict[str, Probe] = {p.name: p for p in (
    Probe("cpuinfo", parse_cpuinfo, path="/proc/cpuinfo"),
    Probe("lscpu", parse_lscpu, command=("lscpu",), optional=True),
    Probe("meminfo", parse_meminfo, path="/proc/meminfo"),
    Probe("disk", parse_df, command=("sh", "-c", DF_SCRIPT, "sh", "{path}")),
    Probe("os_release", parse_os_release, path="/etc/os-release", optional=True),
    Probe("tegra", parse_nv_tegra_release, path="/etc/nv_tegra_release", optional=True),
    Probe("deployed", parse_manifest, command=("cat", "{path}/current/manifest.json"), optional=True),
    Probe("python", parse_json_line, command=("{python}", "-c", PYTHON_PROBE, "{arg}")),
    Probe("power", parse_json_line, command=("{python}", "-c", POWER_PROBE, "{path}/.edgekit/probe", "{arg}"),
          optional=True),
)}
"""Every probe doctor runs. tests/test_doctor*.py fails if one has no captured case."""
