"""The project file ``edgekit.toml``: schema (pydantic, extra keys forbidden) and loader.

Relative paths in the file are resolved against the file's own directory.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Annotated, Dict, List, Literal, Optional, Union

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from pydantic import (AllowInfNan, BaseModel, ConfigDict, Field, Strict, ValidationError, field_validator,
                      model_validator)

from .device import plugins as device_plugins
from .device.power import DEFAULT_GRID_G_PER_KWH
from .device.sensors import REGISTRY as POWER_SAMPLERS
from .errors import ConfigError
from .exporters import SourceName
from . import exporters

DTYPES = ("float32", "float16", "int64", "int32", "int8", "uint8", "bool")

# Numbers are taken as written: pydantic's lax mode would turn opset = "17" into 17 and a quoted
# port into an int, hiding a typo; and nan/inf pass every >=/<= check, so a threshold of nan gates
# nothing. Floats still accept integers (threshold = 1).
Int = Annotated[int, Strict()]
Num = Annotated[float, Strict(), AllowInfNan(False)]
Port = Annotated[int, Strict(), Field(ge=1, le=65535)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSpec(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    source: SourceName
    """A registered exporter (``edgekit.exporters``): torch, hf, onnx, tflite, or a plugin's."""
    factory: Optional[str] = None
    """torch: ``path/to/file.py:function`` returning a torch.nn.Module (weights loaded)."""
    path: Optional[Path] = None
    """hf: the model directory; onnx: the .onnx file; tflite: a converted .tflite file (shipped as is)."""
    task: str = "feature-extraction"
    opset: Int = Field(17, ge=11, le=21)
    export_tolerance: Num = Field(1e-3, gt=0)
    """Max abs difference allowed between framework outputs and the exported ONNX model."""

    @model_validator(mode="after")
    def _source_fields(self) -> "ModelSpec":
        missing = exporters.get(self.source).check_fields(self)
        if missing:
            raise ValueError(missing)
        return self


class InputSpec(_Strict):
    name: str
    shape: List[Int]
    """One sample's shape as the model takes it, batch axis included (size 1); ``[]`` for a scalar."""
    dtype: Literal[DTYPES] = "float32"  # type: ignore[valid-type]
    dynamic_axes: Dict[int, str] = Field(default_factory=dict)
    """Axis index -> symbolic name, e.g. {0 = "batch", 1 = "sequence"}."""
    batch_axis: Union[int, Literal["none"], None] = None
    """The axis that holds samples, in the model and in data files (default 0; ``"none"`` for an input
    without one, such as a sample rate; a scalar has none)."""
    constant: bool = False
    """The data file holds one sample of this input, fed with every sample (an initial state)."""
    value: Optional[Union[float, int, bool, List[object]]] = None
    """A value given here instead of in the data files, fed with every sample (e.g. ``sr = 16000``)."""

    @field_validator("shape")
    @classmethod
    def _positive(cls, v: List[int]) -> List[int]:
        if any(d <= 0 for d in v):
            raise ValueError("expected a list of positive dimensions ([] for a scalar)")
        return v

    @model_validator(mode="after")
    def _batch_axis(self) -> "InputSpec":
        if self.batch_axis is None:
            self.batch_axis = 0 if self.shape else "none"
        if isinstance(self.batch_axis, int) and not self.shape:
            raise ValueError("a scalar (shape = []) has no batch axis: leave batch_axis out or set it to \"none\"")
        if isinstance(self.batch_axis, int) and not 0 <= self.batch_axis < len(self.shape):
            raise ValueError(f"batch_axis {self.batch_axis} is not an axis of shape {self.shape}: use 0.."
                             f"{len(self.shape) - 1}, or \"none\" for an input without a batch axis")
        if self.constant and self.value is not None:
            raise ValueError("give either constant = true (one sample in the data files) or value, not both")
        if self.value is not None:
            import numpy as np  # only for the shape check of an inline value

            try:
                got = list(np.asarray(self.value, dtype=self.dtype).shape)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"value is not a {self.dtype} array: {exc}") from None
            if got != list(self.shape):
                raise ValueError(f"value has shape {got}, but shape = {self.shape} (the value is one sample, "
                                 "fed with every sample)")
        return self

    @property
    def batch(self) -> Optional[int]:
        """The batch axis, or None for an input without one."""
        return self.batch_axis if isinstance(self.batch_axis, int) else None


class DataSpec(_Strict):
    data: Optional[Path] = None
    """.npz/.npy file or a directory of them; arrays are stacked on axis 0 (one sample per row)."""
    text: Optional[Path] = None
    """A file of lines, tokenized with the tokenizer in the Hugging Face model directory."""
    labels: Optional[str] = None
    """Key in the .npz holding integer labels (reports task accuracy beside agreement)."""
    max_samples: Int = Field(256, ge=1)

    @model_validator(mode="after")
    def _one_source(self) -> "DataSpec":
        if (self.data is None) == (self.text is None):
            raise ValueError("give exactly one of 'data' or 'text'")
        return self


class StatePair(_Strict):
    input: str
    """The state input fed at every chunk of a stream."""
    output: str
    """The model output that becomes ``input`` at the next chunk of the same stream."""


class StreamSpec(_Strict):
    """Stateful streaming models (voice activity, keyword spotting): samples are consecutive chunks
    of streams; each chunk after a stream's first gets the previous chunk's state output. The first
    chunk's state comes from the data (or the input's ``value``/``constant``)."""
    state: List[StatePair]
    chunks: Optional[Int] = Field(None, ge=1)
    """Every ``chunks`` consecutive samples form one stream (the last may be shorter)."""
    ids: Optional[str] = None
    """Or: the data file's array (key) giving each sample's stream id; a new id starts a stream."""

    @field_validator("state", mode="before")
    @classmethod
    def _one_or_many(cls, v: object) -> object:
        return [v] if isinstance(v, dict) else v

    @model_validator(mode="after")
    def _one_grouping(self) -> "StreamSpec":
        if (self.chunks is None) == (self.ids is None):
            raise ValueError("give exactly one of 'chunks' (samples per stream) or 'ids' (an array of stream ids)")
        if not self.state:
            raise ValueError("'state' needs at least one {input = ..., output = ...} pair")
        return self


class DetectionOptions(_Strict):
    """metric 'detections': the candidate's detections matched against FP32's (edgekit/device/guard.py)."""
    layout: Literal["yolov8", "anchors-first", "yolov5"] = "yolov8"
    """yolov8: [batch, 4+C, anchors] (Ultralytics export); anchors-first: [batch, anchors, 4+C];
    yolov5: [batch, anchors, 5+C] with objectness (score = objectness x class score)."""
    box: Literal["xywh", "xyxy"] = "xywh"
    """xywh: centre x, centre y, width, height; xyxy: corners."""
    score_threshold: Num = Field(0.25, gt=0, le=1)
    iou: Num = Field(0.5, gt=0, le=1)
    """A candidate detection matches an FP32 one of the same class at this IoU or more."""
    nms_iou: Num = Field(0.7, gt=0, le=1)
    max_detections: Int = Field(300, ge=1)


class SequenceOptions(_Strict):
    """metric 'sequences': greedy-decoded argmax sequences must equal FP32's (CTC-style OCR, ASR)."""
    blank: Optional[Int] = 0
    """The CTC blank class, dropped after collapsing repeats (-1 or none: nothing dropped)."""
    collapse_repeats: bool = True
    class_axis: Int = -1
    time_axis: Int = -2


class GuardSpec(_Strict):
    """Built-in guards every candidate must pass on every output, beside the metric (see README)."""
    enabled: bool = True
    max_rel_error: Num = Field(0.5, gt=0)
    """Per output: ||candidate - fp32|| / ||fp32|| at most this."""
    max_slice_rel_error: Num = Field(0.75, gt=0)
    """The same per slice along the output's feature axis."""
    min_range_kept: Num = Field(0.25, ge=0, le=1)
    """A slice that varies in FP32 must keep at least this share of its range (else it 'collapsed')."""
    min_argmax_agreement: Num = Field(0.5, ge=0, le=1)
    min_rank_agreement: Num = Field(0.5, ge=0, le=1)
    """Outputs that look like scores (slices in [0, 1]): argmax and top-10 agreement with FP32."""
    feature_axis: Dict[str, Int] = Field(default_factory=dict)
    """Output name -> the axis whose slices are checked (default: axis 1 for [N, C, anchors]-like
    outputs, else the last axis)."""
    skip: List[str] = Field(default_factory=list)
    """Outputs the guards ignore (e.g. a raw feature map nobody reads)."""


def _known_metric(name: str) -> str:
    """A name in the metric registry (edgekit/device/metrics/, and the project's plugins)."""
    from .device import metrics as metric_registry  # numpy: only once a config is checked

    if name not in metric_registry.REGISTRY:
        raise ValueError(f"unknown metric '{name}', expected one of: {', '.join(metric_registry.names())}")
    return name


class ValidationSpec(DataSpec):
    metric: str = "top1"
    """A registered metric's name (edgekit/device/metrics/ or a plugin)."""
    threshold: Num
    """top1/topk/cosine: at least this; psnr: at least this many dB; max_abs/max_rel: at most this."""
    k: Int = Field(5, ge=1)
    output: Optional[str] = None
    """Which model output the metric reads (default: the first)."""
    pooling: Literal["none", "mean"] = "none"
    """cosine on token embeddings: 'mean' pools over the attention mask first (sentence embeddings)."""
    mask_input: str = "attention_mask"
    also: Dict[str, Num] = Field(default_factory=dict)
    """Further metrics the device run must meet too, e.g. {psnr = 30, max_abs = 0.05} (each in its
    metric's direction). ``metric``/``threshold`` still choose the build; these gate validate."""
    stream: Optional[StreamSpec] = None
    """Score (and calibrate) on streams of chunks, carrying state outputs back in (see StreamSpec)."""
    reference_samples: Int = Field(32, ge=1)
    """At most this many validation samples (whole streams) ship in reference.npz for validate."""
    reference_max_mb: Num = Field(64.0, gt=0)
    """And at most this many MB of them (inputs + FP32 outputs); the smaller bound wins."""
    detections: DetectionOptions = Field(default_factory=DetectionOptions)
    sequences: SequenceOptions = Field(default_factory=SequenceOptions)
    guard: GuardSpec = Field(default_factory=GuardSpec)

    @field_validator("metric")
    @classmethod
    def _metric(cls, v: str) -> str:
        return _known_metric(v)

    @field_validator("also")
    @classmethod
    def _also(cls, v: Dict[str, float]) -> Dict[str, float]:
        for name in v:
            _known_metric(name)
        return v


class DeviceSpec(_Strict):
    name: str = Field(pattern=r"^[^\s\x00-\x1f\x7f-][^\s\x00-\x1f\x7f]*$", max_length=255)
    """Any name an Ansible inventory gives (unicode, IPv6, ...) but blanks and control characters;
    file names use edgekit.transport.inventory.safe_filename(name)."""
    target: str = ""
    """The target profile. Only an entry that adds settings to an inventory host of the same name
    may leave it out (the inventory's edgekit_target then gives it; see edgekit.fleet.all_devices)."""
    transport: str = "local"
    """A name from the transport registry (edgekit.transport.names(): local, ssh, and any registered)."""
    path: str = "~/edgekit"
    """The device directory that holds releases/ and current."""
    host: Optional[str] = None
    port: Optional[Port] = None
    user: Optional[str] = None
    identity_file: Optional[str] = None
    python: str = "python3"
    """The device's interpreter (as Ansible's ansible_python_interpreter)."""
    groups: List[str] = Field(default_factory=list)
    connect_timeout: Optional[Num] = Field(None, gt=0, le=3600)
    """Seconds to reach the device (TCP, SSH greeting, key exchange, auth), each step; default:
    ``ConnectTimeout`` from ~/.ssh/config, else 10. ``--connect-timeout`` wins over both."""

    @field_validator("transport")
    @classmethod
    def _known_transport(cls, v: str) -> str:
        from .transport import names  # the registry is the one list of transports

        if v not in names():
            raise ValueError(f"unknown transport '{v}', expected one of: {', '.join(names())}")
        return v

    @model_validator(mode="after")
    def _ssh_host(self) -> "DeviceSpec":
        if self.transport == "ssh" and not self.host:
            raise ValueError(f"device '{self.name}': transport 'ssh' needs host")
        return self


class DeploySpec(_Strict):
    keep_releases: Int = Field(3, ge=1)
    max_parallel: Int = Field(8, ge=1)
    known_hosts: Optional[Path] = None
    inventory: Optional[Path] = None


class PowerSpec(_Strict):
    """Power sampling during ``edgekit validate``: the runner measures an idle baseline, then samples
    over the timed window and reports energy per inference and carbon (see edgekit/device/power.py)."""
    sampler: str = "auto"
    """'auto': the target profile's sensor, else the labelled CPU-time estimate; 'none': no sampling;
    or a sampler name (edgekit doctor lists what the device has)."""
    rate_hz: Num = Field(10.0, ge=1, le=100)
    idle_s: Num = Field(2.0, ge=0, le=60)
    """Seconds of idle baseline before the window (0: no baseline, so no energy above idle)."""
    requests_per_s: Num = Field(1.0, gt=0)
    """The request rate the carbon-per-day figure assumes."""
    grid_g_per_kwh: Num = Field(DEFAULT_GRID_G_PER_KWH, ge=0, le=2000)
    """Grid carbon intensity, gCO2e/kWh (default: the 2023 world average, Ember)."""

    @field_validator("sampler")
    @classmethod
    def _known_sampler(cls, v: str) -> str:
        known = ["auto", "none", *sorted(POWER_SAMPLERS)]
        if v not in known:
            raise ValueError(f"unknown power sampler '{v}', expected one of: {', '.join(known)}")
        return v


class ProjectConfig(_Strict):
    plugins: List[str] = Field(default_factory=list)
    """The project's own metric and sensor files (relative to edgekit.toml), imported when the file
    is loaded and shipped in every release's plugins/ (see edgekit/device/plugins.py)."""
    model: ModelSpec
    inputs: List[InputSpec]
    calibration: DataSpec
    validation: ValidationSpec
    devices: List[DeviceSpec] = Field(default_factory=list)
    deploy: DeploySpec = Field(default_factory=DeploySpec)
    power: PowerSpec = Field(default_factory=PowerSpec)
    targets: List[str] = Field(default_factory=list)
    """Targets the release flow builds (``edgekit build --all``)."""
    targets_dir: Optional[Path] = None
    """A folder of the project's own target profiles (default: ``targets/`` beside this file, when
    it exists); they merge over the built-in ones."""
    seed: Int = 0

    path: Path = Field(Path("edgekit.toml"), exclude=True)
    """Where this config was read from (set by ``load``)."""

    @property
    def root(self) -> Path:
        return self.path.parent

    def plugin_files(self) -> List[Path]:
        """The plugin files, resolved (what the build ships in the release's plugins/)."""
        return [(self.root / p).resolve() for p in self.plugins]

    def resolve(self, p: Union[Path, str, None]) -> Optional[Path]:
        if p is None:
            return None
        if str(p).startswith("pkg:"):
            return package_path(str(p)[4:])
        p = Path(p).expanduser()
        return p if p.is_absolute() else (self.root / p)

    def target_dirs(self) -> List[Path]:
        """The project's own target-profile folders, for ``targets.resolve(..., project_dirs=...)``."""
        if self.targets_dir is not None:
            folder = self.resolve(self.targets_dir)
            if folder is None or not folder.is_dir():
                raise ConfigError(f"{self.path}: field 'targets_dir': {folder} is not a directory")
            return [folder]
        default = self.root / "targets"
        return [default] if default.is_dir() else []

    def device(self, name: str) -> DeviceSpec:
        """A device defined in this file alone (edgekit.fleet.select_devices also reads inventories)."""
        for i, d in enumerate(self.devices):
            if d.name == name:
                if not d.target:
                    raise ConfigError(f"{self.path}: field 'devices.{i}.target': device '{name}' has no target "
                                      "(only an entry adding settings to an inventory host may leave it out)")
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
    given = err.get("input")
    if isinstance(given, (str, int, float)) and len(repr(given)) <= 60:
        msg += f" (got {given!r}{', a string' if isinstance(given, str) else ''})"
    return f"{label} '{where}': {msg}"


def load_plugins(path: Path, plugins: object) -> List[Path]:
    """Import the files edgekit.toml's ``plugins`` lists, before the rest of it is checked: the
    metric and sensor names it uses may be theirs. Returns their paths."""
    if plugins is None:
        return []
    if not isinstance(plugins, list) or not all(isinstance(p, str) and p for p in plugins):
        raise ConfigError(f"{path}: field 'plugins': expected a list of .py file paths relative to {path.name}")
    files, names = [], {}
    for i, rel in enumerate(plugins):
        file = (path.resolve().parent / rel).resolve()
        if file.name in names:  # a release holds them side by side in plugins/
            raise ConfigError(f"{path}: field 'plugins.{i}': {rel} has the same file name as {names[file.name]}; "
                              "rename one")
        names[file.name] = rel
        try:
            device_plugins.load_file(str(file))
        except device_plugins.PluginError as exc:
            raise ConfigError(f"{path}: field 'plugins.{i}': {exc.message}") from None
        files.append(file)
    return files


def load(path: Union[Path, str] = "edgekit.toml") -> ProjectConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found", hint="run edgekit from your project directory or pass --config")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: malformed TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason}); TOML files must be UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    load_plugins(path, data.get("plugins") if isinstance(data, dict) else None)
    try:
        cfg = ProjectConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {first_error(exc)}") from None
    cfg.path = path.resolve()
    names = [i.name for i in cfg.inputs]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: field 'inputs': input names must be unique, got {names}")
    seen = set()
    for i, d in enumerate(cfg.devices):
        if d.name in seen:  # the first would silently win every --device lookup
            raise ConfigError(f"{path}: field 'devices.{i}.name': device name '{d.name}' is used twice; names must be unique")
        seen.add(d.name)
    stream = cfg.validation.stream
    for i, pair in enumerate(stream.state if stream else []):
        if pair.input not in names:
            raise ConfigError(f"{path}: field 'validation.stream.state.{i}.input': '{pair.input}' is not one of "
                              f"the [[inputs]] ({', '.join(names)})")
    return cfg
