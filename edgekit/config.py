"""The project file ``edgekit.toml``: schema (pydantic, extra keys forbidden) and loader.

Relative paths in the file are resolved against the file's own directory.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Dict, List, Literal, Optional, Union

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .device.power import DEFAULT_GRID_G_PER_KWH, REGISTRY as POWER_SAMPLERS
from .errors import ConfigError

DTYPES = ("float32", "float16", "int64", "int32", "int8", "uint8", "bool")
METRICS = ("top1", "topk", "cosine", "psnr", "max_abs", "max_rel", "detections", "sequences")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSpec(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    source: Literal["torch", "hf", "onnx", "tflite"]
    factory: Optional[str] = None
    """torch: ``path/to/file.py:function`` returning a torch.nn.Module (weights loaded)."""
    path: Optional[Path] = None
    """hf: the model directory; onnx: the .onnx file; tflite: a converted .tflite file (shipped as is)."""
    task: str = "feature-extraction"
    opset: int = Field(17, ge=11, le=21)
    export_tolerance: float = Field(1e-3, gt=0)
    """Max abs difference allowed between framework outputs and the exported ONNX model."""

    @model_validator(mode="after")
    def _source_fields(self) -> "ModelSpec":
        if self.source == "torch":
            if not self.factory or ":" not in self.factory:
                raise ValueError("source 'torch' needs factory = 'path/to/file.py:function'")
        elif self.path is None:
            raise ValueError(f"source '{self.source}' needs path")
        return self


class InputSpec(_Strict):
    name: str
    shape: List[int]
    dtype: Literal[DTYPES] = "float32"  # type: ignore[valid-type]
    dynamic_axes: Dict[int, str] = Field(default_factory=dict)
    """Axis index -> symbolic name, e.g. {0 = "batch", 1 = "sequence"}."""

    @field_validator("shape")
    @classmethod
    def _positive(cls, v: List[int]) -> List[int]:
        if not v or any(d <= 0 for d in v):
            raise ValueError("expected a list of positive dimensions")
        return v


class DataSpec(_Strict):
    data: Optional[Path] = None
    """.npz/.npy file or a directory of them; arrays are stacked on axis 0 (one sample per row)."""
    text: Optional[Path] = None
    """A file of lines, tokenized with the tokenizer in the Hugging Face model directory."""
    labels: Optional[str] = None
    """Key in the .npz holding integer labels (reports task accuracy beside agreement)."""
    max_samples: int = Field(256, ge=1)

    @model_validator(mode="after")
    def _one_source(self) -> "DataSpec":
        if (self.data is None) == (self.text is None):
            raise ValueError("give exactly one of 'data' or 'text'")
        return self


class DetectionOptions(_Strict):
    """metric 'detections': the candidate's detections matched against FP32's (edgekit/device/guard.py)."""
    layout: Literal["yolov8", "anchors-first", "yolov5"] = "yolov8"
    """yolov8: [batch, 4+C, anchors] (Ultralytics export); anchors-first: [batch, anchors, 4+C];
    yolov5: [batch, anchors, 5+C] with objectness (score = objectness x class score)."""
    box: Literal["xywh", "xyxy"] = "xywh"
    """xywh: centre x, centre y, width, height; xyxy: corners."""
    score_threshold: float = Field(0.25, gt=0, le=1)
    iou: float = Field(0.5, gt=0, le=1)
    """A candidate detection matches an FP32 one of the same class at this IoU or more."""
    nms_iou: float = Field(0.7, gt=0, le=1)
    max_detections: int = Field(300, ge=1)


class SequenceOptions(_Strict):
    """metric 'sequences': greedy-decoded argmax sequences must equal FP32's (CTC-style OCR, ASR)."""
    blank: Optional[int] = 0
    """The CTC blank class, dropped after collapsing repeats (-1 or none: nothing dropped)."""
    collapse_repeats: bool = True
    class_axis: int = -1
    time_axis: int = -2


class GuardSpec(_Strict):
    """Built-in guards every candidate must pass on every output, beside the metric (see README)."""
    enabled: bool = True
    max_rel_error: float = Field(0.5, gt=0)
    """Per output: ||candidate - fp32|| / ||fp32|| at most this."""
    max_slice_rel_error: float = Field(0.75, gt=0)
    """The same per slice along the output's feature axis."""
    min_range_kept: float = Field(0.25, ge=0, le=1)
    """A slice that varies in FP32 must keep at least this share of its range (else it 'collapsed')."""
    min_argmax_agreement: float = Field(0.5, ge=0, le=1)
    min_rank_agreement: float = Field(0.5, ge=0, le=1)
    """Outputs that look like scores (slices in [0, 1]): argmax and top-10 agreement with FP32."""
    feature_axis: Dict[str, int] = Field(default_factory=dict)
    """Output name -> the axis whose slices are checked (default: axis 1 for [N, C, anchors]-like
    outputs, else the last axis)."""
    skip: List[str] = Field(default_factory=list)
    """Outputs the guards ignore (e.g. a raw feature map nobody reads)."""


class ValidationSpec(DataSpec):
    metric: Literal[METRICS] = "top1"  # type: ignore[valid-type]
    threshold: float
    """top1/topk/cosine: at least this; psnr: at least this many dB; max_abs/max_rel: at most this."""
    k: int = Field(5, ge=1)
    output: Optional[str] = None
    """Which model output the metric reads (default: the first)."""
    pooling: Literal["none", "mean"] = "none"
    """cosine on token embeddings: 'mean' pools over the attention mask first (sentence embeddings)."""
    mask_input: str = "attention_mask"
    also: Dict[Literal[METRICS], float] = Field(default_factory=dict)  # type: ignore[valid-type]
    """Further metrics the device run must meet too, e.g. {psnr = 30, max_abs = 0.05} (each in its
    metric's direction). ``metric``/``threshold`` still choose the build; these gate validate."""
    detections: DetectionOptions = Field(default_factory=DetectionOptions)
    sequences: SequenceOptions = Field(default_factory=SequenceOptions)
    guard: GuardSpec = Field(default_factory=GuardSpec)


class DeviceSpec(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    target: str
    transport: Literal["local", "ssh"] = "local"
    path: str = "~/edgekit"
    """The device directory that holds releases/ and current."""
    host: Optional[str] = None
    port: Optional[int] = None
    user: Optional[str] = None
    identity_file: Optional[str] = None
    python: str = "python3"
    """The device's interpreter (as Ansible's ansible_python_interpreter)."""
    groups: List[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _ssh_host(self) -> "DeviceSpec":
        if self.transport == "ssh" and not self.host:
            raise ValueError(f"device '{self.name}': transport 'ssh' needs host")
        return self


class DeploySpec(_Strict):
    keep_releases: int = Field(3, ge=1)
    max_parallel: int = Field(8, ge=1)
    known_hosts: Optional[Path] = None
    inventory: Optional[Path] = None


class PowerSpec(_Strict):
    """Power sampling during ``edgekit validate``: the runner measures an idle baseline, then samples
    over the timed window and reports energy per inference and carbon (see edgekit/device/power.py)."""
    sampler: str = "auto"
    """'auto': the target profile's sensor, else the labelled CPU-time estimate; 'none': no sampling;
    or a sampler name (edgekit doctor lists what the device has)."""
    rate_hz: float = Field(10.0, ge=1, le=100)
    idle_s: float = Field(2.0, ge=0, le=60)
    """Seconds of idle baseline before the window (0: no baseline, so no energy above idle)."""
    requests_per_s: float = Field(1.0, gt=0)
    """The request rate the carbon-per-day figure assumes."""
    grid_g_per_kwh: float = Field(DEFAULT_GRID_G_PER_KWH, ge=0, le=2000)
    """Grid carbon intensity, gCO2e/kWh (default: the 2023 world average, Ember)."""

    @field_validator("sampler")
    @classmethod
    def _known_sampler(cls, v: str) -> str:
        known = ["auto", "none", *sorted(POWER_SAMPLERS)]
        if v not in known:
            raise ValueError(f"unknown power sampler '{v}', expected one of: {', '.join(known)}")
        return v


class ProjectConfig(_Strict):
    model: ModelSpec
    inputs: List[InputSpec]
    calibration: DataSpec
    validation: ValidationSpec
    devices: List[DeviceSpec] = Field(default_factory=list)
    deploy: DeploySpec = Field(default_factory=DeploySpec)
    power: PowerSpec = Field(default_factory=PowerSpec)
    targets: List[str] = Field(default_factory=list)
    """Targets the release flow builds (``edgekit build --all``)."""
    seed: int = 0

    path: Path = Field(Path("edgekit.toml"), exclude=True)
    """Where this config was read from (set by ``load``)."""

    @property
    def root(self) -> Path:
        return self.path.parent

    def resolve(self, p: Union[Path, str, None]) -> Optional[Path]:
        if p is None:
            return None
        if str(p).startswith("pkg:"):
            return package_path(str(p)[4:])
        p = Path(p).expanduser()
        return p if p.is_absolute() else (self.root / p)

    def device(self, name: str) -> DeviceSpec:
        for d in self.devices:
            if d.name == name:
                return d
        known = ", ".join(d.name for d in self.devices) or "none"
        raise ConfigError(f"{self.path}: no device named '{name}' (devices: {known})")


def package_path(spec: str) -> Path:
    """``pkg:NAME/sub/dir``: a directory inside an installed Python package (e.g. bundled weights)."""
    import importlib.util

    name, _, rest = spec.partition("/")
    try:
        found = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        found = None
    if found is None or not found.submodule_search_locations:
        raise ConfigError(f"package '{name}' is not installed (needed for path 'pkg:{spec}')",
                          hint=f"pip install --no-deps {name.replace('_', '-')}")
    return Path(list(found.submodule_search_locations)[0]) / rest


def first_error(exc: ValidationError, label: str = "field") -> str:
    """pydantic's first error as one phrase naming the key: the schemas' (config, targets, the
    command line's power options) shared wording."""
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "(top level)"
    if err["type"] == "extra_forbidden":
        return f"unknown key '{where}'"
    if err["type"] == "missing":
        return f"missing {label} '{where}'"
    msg = re.sub(r"^Value error, ", "", err["msg"])
    return f"{label} '{where}': {msg}"


def load(path: Union[Path, str] = "edgekit.toml") -> ProjectConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found", hint="run edgekit from your project directory or pass --config")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: malformed TOML: {exc}") from None
    try:
        cfg = ProjectConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {first_error(exc)}") from None
    cfg.path = path.resolve()
    names = [i.name for i in cfg.inputs]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: field 'inputs': input names must be unique, got {names}")
    return cfg
