"""The run file: what runner.py writes on the device, checked before the host stores or shows it.

Every byte of a result JSON comes from a device, so it is read as hostile: a size limit before
it is read, JSON without NaN/Infinity literals, a nesting limit (checked without recursion), then
a pydantic schema for the fields the host uses (numbers are numbers, flags are booleans, messages
are strings). Whatever fails becomes one line naming the file and the field.

Kept apart from validate.py and runs.py, which both use it, so neither imports the other.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any, Dict, List, Literal, Optional, Union

from pydantic import AllowInfNan, BaseModel, ConfigDict, Field, Strict, ValidationError

DEFAULT_MAX_RESULT_MB = 32.0
MAX_DEPTH = 32
"""Nesting the runner never comes near (it writes 5 levels); a hostile file's 10^5 does."""
MAX_POINTS = 1_000_000
"""Longest latency sample list or power trace the report plots (the runner strides to ~10^4)."""
MAX_TEXT = 64 * 1024
"""Longest string kept in a field the host prints (a message, a provider name)."""


def max_result_bytes(value_mb: Optional[float] = None) -> int:
    """The size limit for a result or run file: ``value_mb``, else ``$EDGEKIT_MAX_RESULT_MB``, else 32 MB."""
    if value_mb is None:
        raw = os.environ.get("EDGEKIT_MAX_RESULT_MB", "")
        try:
            value_mb = float(raw) if raw else DEFAULT_MAX_RESULT_MB
        except ValueError:
            value_mb = DEFAULT_MAX_RESULT_MB
    if not value_mb > 0:  # also refuses nan
        value_mb = DEFAULT_MAX_RESULT_MB
    return int(value_mb * 1e6)


class RunFileError(ValueError):
    """A result or run file that is not what runner.py writes: ``field`` says where."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"field '{field}': {problem}" if field else problem)
        self.field, self.problem = field, problem


# The runner writes non-finite figures as strings ('inf' for a PSNR of identical outputs).
# Magnitudes are bounded too: no latency, watt or metric comes near 1e15, while 1e308 overflows
# the report's plot arithmetic (matplotlib raises on such axes).
LIMIT = 1e15
Finite = Annotated[float, AllowInfNan(False), Field(ge=-LIMIT, le=LIMIT)]
Count = Annotated[int, Strict(), Field(ge=-int(LIMIT), le=int(LIMIT))]
Number = Union[Count, Finite, Literal["inf", "-inf", "nan"]]
Text = Annotated[str, Field(max_length=MAX_TEXT)]
Flag = Annotated[bool, Strict()]


class _Part(BaseModel):
    # Unknown keys stay (newer runners add figures); known ones must have their type. Strict, so a
    # string never passes for a number and 1 never for true.
    model_config = ConfigDict(extra="allow", strict=True)


class Check(_Part):
    name: Text
    value: Optional[Number] = None
    threshold: Optional[Number] = None
    passed: Flag = False


class Metric(_Part):
    name: Optional[Text] = None
    value: Optional[Number] = None
    threshold: Optional[Number] = None
    passed: Optional[Flag] = None
    min: Optional[Number] = None
    n: Optional[Count] = None
    output: Optional[Text] = None
    task_accuracy: Optional[Number] = None
    also: Optional[List[Check]] = None


class Latency(_Part):
    mean_ms: Optional[Number] = None
    min_ms: Optional[Number] = None
    max_ms: Optional[Number] = None
    p50_ms: Optional[Number] = None
    p90_ms: Optional[Number] = None
    p99_ms: Optional[Number] = None
    first_load_ms: Optional[Number] = None
    session_create_ms: Optional[Number] = None
    iterations: Optional[Count] = None
    window_s: Optional[Number] = None
    repeat: Optional[Count] = None
    samples_ms: Optional[Annotated[List[Finite], Field(max_length=MAX_POINTS)]] = None


class Carbon(_Part):
    grid_g_per_kwh: Optional[Finite] = None
    requests_per_s: Optional[Finite] = None
    g_per_1000_inferences: Optional[Finite] = None
    g_per_day_at_rps: Optional[Finite] = None
    basis: Optional[Text] = None


class Power(_Part):
    """The power block: the runner writes non-finite figures here as null, so numbers are finite."""

    sampler: Optional[Text] = None
    requested: Optional[Text] = None
    scope: Optional[Text] = None
    scope_note: Optional[Text] = None
    is_estimate: Optional[Flag] = None
    available: Optional[Flag] = None
    method: Optional[Text] = None
    reason: Optional[Text] = None
    energy_j: Optional[Finite] = None
    energy_per_inference_mj: Optional[Finite] = None
    energy_per_inference_above_idle_mj: Optional[Finite] = None
    mean_power_w: Optional[Finite] = None
    idle_power_w: Optional[Finite] = None
    trace: Optional[Annotated[List[Annotated[List[Finite], Field(min_length=2)]], Field(max_length=MAX_POINTS)]] = None
    window: Optional[Annotated[List[Finite], Field(min_length=2, max_length=2)]] = None
    carbon: Optional[Carbon] = None
    warnings: Optional[List[Text]] = None


class Runtime(_Part):
    name: Optional[Text] = None
    version: Optional[Text] = None
    provider: Optional[Text] = None


class ErrorInfo(_Part):
    kind: Optional[Text] = None
    message: Text = ""
    hint: Optional[Text] = None


class Finding(_Part):
    """One guard finding (edgekit/device/guard.py): the report prints output, slice, check, message."""

    output: Optional[Text] = None
    check: Optional[Text] = None
    slice: Optional[Count] = None
    axis: Optional[Count] = None
    value: Optional[Number] = None
    threshold: Optional[Number] = None
    message: Text = ""


class Guard(_Part):
    passed: Flag = False
    enabled: Optional[Flag] = None
    findings: Annotated[List[Finding], Field(max_length=MAX_POINTS)] = Field(default_factory=list)
    outputs: Optional[Annotated[List[Dict[str, Any]], Field(max_length=MAX_POINTS)]] = None


class Host(_Part):
    device: Optional[Text] = None


class ResultFile(_Part):
    """A result JSON as runner.py writes it (``host`` is added by the host when it stores a run)."""

    schema_: Annotated[int, Strict()] = Field(alias="schema")
    started: Optional[Text] = None
    ok: Flag = False
    release_id: Optional[Text] = None
    target: Optional[Text] = None
    metric: Metric = Field(default_factory=Metric)
    metrics: Dict[str, Optional[Number]] = Field(default_factory=dict)
    guard: Optional[Guard] = None
    latency: Latency = Field(default_factory=Latency)
    power: Optional[Power] = None
    memory: Dict[str, Optional[Number]] = Field(default_factory=dict)
    runtime: Runtime = Field(default_factory=Runtime)
    versions: Dict[str, Optional[Union[Text, Number]]] = Field(default_factory=dict)
    device: Dict[str, Any] = Field(default_factory=dict)
    error: Optional[ErrorInfo] = None
    host: Optional[Host] = None


def _depth_ok(value: Any, limit: int) -> bool:
    """No container nested deeper than ``limit`` (iterative: a deep file cannot recurse us)."""
    stack = [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, (dict, list)):
            if d > limit:
                return False
            stack.extend((c, d + 1) for c in (v.values() if isinstance(v, dict) else v))
    return True


def _branch(part: Any) -> bool:
    """A union branch pydantic adds to an error's location (``int``, ``literal['inf',...]``)."""
    return isinstance(part, str) and (part in ("int", "float", "str", "bool")
                                      or part.startswith(("literal[", "function-", "constrained-")))


_JSON_TYPES = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
               float: "a number", type(None): "null"}


def _field_error(exc: ValidationError) -> RunFileError:
    err = exc.errors()[0]
    loc = err["loc"]
    where = ".".join(str(p) for p in loc if not _branch(p))
    if err["type"] == "missing":
        return RunFileError(where, "missing")
    given = err.get("input")
    got = "an infinite number" if isinstance(given, float) and given in (float("inf"), float("-inf")) \
        else _JSON_TYPES.get(type(given), "something else")
    if any(_branch(p) for p in loc):  # a Number (or text-or-number) field: one phrase for all branches
        branches = {str(e["loc"][-1]) for e in exc.errors() if tuple(e["loc"][:-1]) == tuple(loc[:-1])}
        wanted = "a string or a number" if branches & {"str", "constrained-str"} \
            else "a finite number within +-1e15 (or 'inf'/'nan')"
        return RunFileError(where, f"expected {wanted}, got {got}")
    return RunFileError(where, f"{err['msg'][0].lower()}{err['msg'][1:]}, got {got}")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_result(raw: bytes) -> Dict[str, Any]:
    """Bytes of a result or run file -> the checked dict; RunFileError names what is wrong."""
    try:
        data = json.loads(raw, parse_constant=_no_constant)
    except RecursionError:
        raise RunFileError("", f"nested deeper than {MAX_DEPTH} levels") from None
    except UnicodeDecodeError as exc:
        raise RunFileError("", f"not UTF-8 (byte {exc.start})") from None
    except ValueError as exc:
        raise RunFileError("", f"invalid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise RunFileError("", f"expected a JSON object, got {type(data).__name__}")
    if not _depth_ok(data, MAX_DEPTH):
        raise RunFileError("", f"nested deeper than {MAX_DEPTH} levels")
    try:
        ResultFile.model_validate(data)
    except ValidationError as exc:
        raise _field_error(exc) from None
    return data


def read_result(path: Path, limit: int) -> Dict[str, Any]:
    """Read and check a result/run file no larger than ``limit`` bytes (OSError passes through)."""
    with open(path, "rb") as f:
        raw = f.read(limit + 1)
    if len(raw) > limit:
        raise RunFileError("", f"larger than the {limit / 1e6:g} MB limit (EDGEKIT_MAX_RESULT_MB)")
    if not raw.strip():
        raise RunFileError("", "empty")
    return parse_result(raw)


class RunFields(BaseModel):
    """What one validation run reports; ``ValidationResult`` and the report's ``RunRecord`` share it."""

    device: str
    release_id: Optional[str] = None
    target: Optional[str] = None
    ok: bool = False
    metric: Dict[str, Any] = Field(default_factory=dict)
    """The gating metric: name, value, threshold, passed (plus n/min where they exist)."""
    metrics: Dict[str, Any] = Field(default_factory=dict)
    """Every agreement figure: top1, topK, cosine, psnr_db, max_abs, max_rel (and the task metrics in use)."""
    guard: Optional[Dict[str, Any]] = None
    """The built-in guards on the device's outputs: passed, findings naming output and slice, per-output figures."""
    latency: Dict[str, Any] = Field(default_factory=dict)
    power: Optional[Dict[str, Any]] = None
    memory: Dict[str, Any] = Field(default_factory=dict)
    runtime: Dict[str, Any] = Field(default_factory=dict)
    """Which runtime and execution provider really ran (``provider``, ``node_providers``)."""
    versions: Dict[str, Any] = Field(default_factory=dict)
    device_facts: Dict[str, Any] = Field(default_factory=dict)
    error: Optional[Dict[str, Any]] = None
