"""Target profiles: one TOML data file per board, checked by one schema.

The built-in profiles are package data (``edgekit/profiles/*.toml``, so a wheel carries them). A
project adds its own boards as ``targets/<name>.toml`` beside its ``edgekit.toml`` (or in the folder
its ``targets_dir`` names); those merge over the built-ins under the same schema, a project file
with a built-in's name replacing it (and ``edgekit targets list`` saying so).
Adding a target means adding a file; ``tests/test_targets.py`` loads every built-in file.
"""
from __future__ import annotations

import functools
import os
import platform
import sys
from pathlib import Path
from typing import Dict, FrozenSet, List, Literal, NamedTuple, Optional, Sequence, Tuple

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .config import first_error
from .errors import TargetError
from .quantize.registry import PrecisionName

TARGETS_DIR = Path(__file__).resolve().parent / "profiles"
"""Where the built-in profiles live: package data (overridable with EDGEKIT_TARGETS_DIR)."""
PROJECT_TARGETS = "targets"
"""The folder beside a project's edgekit.toml whose ``*.toml`` profiles merge over the built-ins."""
HOST_FLAGS_ENV = "EDGEKIT_HOST_CPU_FLAGS"
"""Replaces this host's CPU flags (space- or comma-separated, as /proc/cpuinfo names them; empty:
none), so tests and cross-builds can take the "host matches the target" and "host does not match"
paths on any machine. Where timing then runs, it still runs on this CPU: the override decides which
path is taken, not what the clock reads."""
HOST_ARCH_ENV = "EDGEKIT_HOST_ARCH"
"""Replaces this host's architecture (x86_64, aarch64), with the same purpose."""

QuantType = Literal["QUInt8", "QInt8"]
FAMILY_ALIASES: Dict[str, str] = {"rpi": "raspberry-pi", "pi": "raspberry-pi", "nvidia-jetson": "jetson"}
X86_FALLBACK = "x86-avx2"
"""What the ``x86`` family resolves to when this host's CPU flags match no x86 profile (an x86 CPU
without AVX2, or a non-x86 build host such as an ARM laptop): the lowest common x86 profile, whose
reduce_range preset is safe on every AVX2 CPU, VNNI or not."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RuntimeSpec(_Strict):
    name: Literal["onnxruntime", "tflite"] = "onnxruntime"
    providers: List[str] = Field(default_factory=lambda: ["CPUExecutionProvider"])
    """Execution providers in priority order; the runner falls back down this list."""
    provider_options: Dict[str, Dict[str, object]] = Field(default_factory=dict)


class QuantizationDefaults(_Strict):
    format: Literal["QDQ", "QOperator"] = "QDQ"
    activation_type: QuantType = "QUInt8"
    weight_type: QuantType = "QInt8"
    per_channel: bool = True
    reduce_range: bool = False
    calibration_method: Literal["MinMax", "Entropy", "Percentile"] = "MinMax"
    symmetric_activations: bool = False
    symmetric_weights: bool = True
    type_candidates: List[Tuple[QuantType, QuantType]] = Field(default_factory=list)
    """Extra (activation, weight) pairs to try and keep the better of (ARM: s8/s8 and u8/s8)."""
    precisions: List[PrecisionName] = Field(default_factory=lambda: ["int8", "fp32"])
    """Candidate precisions ``--precision auto`` chooses between, in preference order: names from the
    candidate registry (``edgekit.quantize.registry``)."""


class TargetProfile(_Strict):
    name: str
    family: str
    family_default: bool = False
    description: str
    arch: Literal["x86_64", "aarch64"]
    cpu: str
    isa_features: List[str] = Field(default_factory=list)
    """CPU flags (as /proc/cpuinfo names them) the int8 kernels of this profile rely on."""
    accelerator: Optional[str] = None
    runtime: RuntimeSpec = Field(default_factory=RuntimeSpec)
    quantization: QuantizationDefaults = Field(default_factory=QuantizationDefaults)
    graph_optimization: Literal["disabled", "basic", "extended", "all"] = "basic"
    """The level baked into the shipped file offline (capped at "basic": higher levels rewrite for
    the build host's hardware). On the device, CPU targets run their session at "all", which int8
    QDQ fusion and the conv layouts need; GPU targets run at this level (presets.runtime_level_for)."""
    intra_op_threads: int = Field(0, ge=0)
    """0 lets the runtime pick (one thread per physical core)."""
    power_sensor: str = "estimate"
    """A registered power sensor (edgekit/device/sensors/, or a project plugin)."""
    nominal_watts_per_core: float = Field(2.0, gt=0)
    """Used only by the ``estimate`` sampler, whose results are always labelled as estimates."""
    min_python: str = "3.8"
    notes: List[str] = Field(default_factory=list)

    @field_validator("power_sensor")
    @classmethod
    def _sensor(cls, v: str) -> str:
        from .device.sensors import REGISTRY

        if v not in REGISTRY:
            raise ValueError(f"unknown power sensor '{v}', expected one of: {', '.join(REGISTRY)}")
        return v

    @field_validator("min_python")
    @classmethod
    def _version(cls, v: str) -> str:
        parts = v.split(".")
        if len(parts) != 2 or not all(p.isdigit() for p in parts):
            raise ValueError("expected MAJOR.MINOR such as '3.8'")
        return v

    @property
    def is_gpu(self) -> bool:
        return self.accelerator is not None


def targets_dir() -> Path:
    """The built-in profiles' folder."""
    return Path(os.environ.get("EDGEKIT_TARGETS_DIR", str(TARGETS_DIR)))


class Entry(NamedTuple):
    profile: TargetProfile
    path: Path
    """The file it was read from."""
    replaces: Optional[Path] = None
    """The built-in (or earlier project) file of the same name this one overrides."""

    @property
    def origin(self) -> str:
        if self.path.parent == targets_dir():
            return "built-in"
        return f"{self.path}" + (" (overrides the built-in)" if self.replaces is not None else "")


def load_profile(path: Path) -> TargetProfile:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise TargetError(f"{path}: malformed TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise TargetError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    except OSError as exc:
        raise TargetError(f"{path}: cannot read target profile: {exc.strerror}") from None
    try:
        profile = TargetProfile.model_validate(data)
    except ValidationError as exc:
        raise TargetError(f"{path}: {first_error(exc)}") from None
    if profile.name != path.stem:
        raise TargetError(f"{path}: field 'name' is '{profile.name}', expected the file name '{path.stem}'")
    return profile


def catalog(directory: Optional[Path] = None, project_dirs: Sequence[Path] = ()) -> Dict[str, Entry]:
    """Every profile with the file it came from: the built-ins (``directory``), then each project
    folder in order, a later file replacing an earlier one of the same name."""
    directory = directory or targets_dir()
    files = sorted(directory.glob("*.toml"))
    if not files:
        raise TargetError(f"{directory}: no target profiles (*.toml) found")
    entries = {p.stem: Entry(load_profile(p), p) for p in files}
    for folder in project_dirs:
        for p in sorted(Path(folder).glob("*.toml")):
            old = entries.get(p.stem)
            entries[p.stem] = Entry(load_profile(p), p, old.path if old else None)
    return entries


def load_all(directory: Optional[Path] = None, project_dirs: Sequence[Path] = ()) -> Dict[str, TargetProfile]:
    return {name: e.profile for name, e in catalog(directory, project_dirs).items()}


@functools.lru_cache(maxsize=1)
def host_cpu() -> Tuple[str, FrozenSet[str]]:
    """(model name, CPU flags) of this machine from /proc/cpuinfo, read and parsed once per process:
    the host's one reader (the device side keeps its own). Empty where unknown."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "", frozenset()
    model, flags = "", None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("flags", "Features") and flags is None:
            flags = frozenset(value.split())
        elif key.lower() in ("model name", "hardware") and not model:
            model = value.strip()
    return model, flags or frozenset()


def host_cpu_flags() -> set:
    """The CPU flags of this machine, as /proc/cpuinfo spells them (empty where unknown);
    ``EDGEKIT_HOST_CPU_FLAGS`` replaces them."""
    override = os.environ.get(HOST_FLAGS_ENV)
    if override is not None:
        return set(override.replace(",", " ").split())
    return set(host_cpu()[1])


def host_arch() -> str:
    m = (os.environ.get(HOST_ARCH_ENV) or platform.machine()).lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(m, m)


def resolve(name: str, directory: Optional[Path] = None, host_flags: Optional[set] = None,
            project_dirs: Sequence[Path] = ()) -> TargetProfile:
    """A full profile name, or a family name (``jetson``, ``rpi``, ``x86``) resolved to its default.

    ``x86`` picks the profile whose ISA features this host has, richest first; when the host has
    none of them (no AVX2, or not an x86 host) it falls back to ``X86_FALLBACK`` (``x86-avx2``).
    ``host_flags`` replaces this host's CPU flags (``host_cpu_flags()``), for tests and cross-builds.
    ``project_dirs``: a project's own profile folders (``ProjectConfig.target_dirs()``).
    """
    profiles = load_all(directory, project_dirs)
    if name in profiles:
        return profiles[name]
    family = FAMILY_ALIASES.get(name, name)
    members = [p for p in profiles.values() if p.family == family]
    if members:
        if family == "x86":
            flags = host_cpu_flags() if host_flags is None else host_flags
            for p in sorted(members, key=lambda p: -len(p.isa_features)):
                if set(p.isa_features) <= flags:
                    return p
        defaults = [p for p in members if p.family_default]
        if defaults:
            return defaults[0]
        if family == "x86":
            fallback = profiles.get(X86_FALLBACK)
            if fallback is not None and fallback.family == "x86":
                return fallback
            return min(members, key=lambda p: (len(p.isa_features), p.name))  # the lowest common one
    known = ", ".join(sorted(profiles))
    families = ", ".join(sorted({p.family for p in profiles.values()} | set(FAMILY_ALIASES)))
    raise TargetError(f"unknown target '{name}'; known targets: {known} (families: {families})")
