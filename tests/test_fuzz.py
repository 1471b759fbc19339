"""Property-based fuzzing (Hypothesis) of every file edgekit reads from a user or a device:
edgekit.toml, target profiles, Ansible inventories and the runner's result JSON.

The property is the project's promise for bad input: the loader either returns a value or raises
an EdgekitError (one line, its own exit code); nothing else escapes (no KeyError, TypeError,
RecursionError, UnicodeDecodeError... that the CLI would turn into exit 70). Accepted results are
also rendered the way the CLI and the report render them, since that is where exit 70 used to come
from (rich markup, format strings on the wrong type).

Bounded in CI: ``EDGEKIT_FUZZ_EXAMPLES`` examples per input format, default 300 (about a minute
for the four formats on a shared 2-core machine). The issue's target run is
``EDGEKIT_FUZZ_EXAMPLES=2000`` (several minutes); set it higher for a longer run on demand.
``EDGEKIT_FUZZ_SEED`` replays one run (Hypothesis prints the failing example either way).
"""
from __future__ import annotations

import io
import json
import math
import os
from pathlib import Path
from typing import Any, Callable, Dict, List

import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from edgekit.errors import EdgekitError

EXAMPLES = int(os.environ.get("EDGEKIT_FUZZ_EXAMPLES", "300"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=False,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])


def seeded(fn: Callable) -> Callable:
    raw = os.environ.get("EDGEKIT_FUZZ_SEED")
    return seed(int(raw))(fn) if raw else fn


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


# ------------------------------------------------------------------------------------------------
# Building blocks: TOML values and a serializer (tomllib reads, nothing in the stdlib writes)
# ------------------------------------------------------------------------------------------------
def toml_str(s: str) -> str:
    # JSON's escapes are TOML basic-string escapes; controls come out as \u00XX, which TOML allows.
    return json.dumps(s, ensure_ascii=False)


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, str):
        return toml_str(v)
    if isinstance(v, RawToml):
        return v.text
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{toml_str(str(k))} = {toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(v)


class RawToml:
    """A TOML literal written as is (dates, times): tomllib turns them into datetime objects."""

    def __init__(self, text: str) -> None:
        self.text = text


def toml_document(doc: Dict[str, Any]) -> str:
    return "\n".join(f"{toml_str(str(k))} = {toml_value(v)}" for k, v in doc.items()) + "\n"


scalars = st.one_of(
    st.integers(min_value=-(2 ** 63), max_value=2 ** 63 - 1), st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(), st.text(max_size=30), st.sampled_from(["", "17", "0", "-1", "nan", "1e999", "~/x", "pkg:", "[/]",
                                                          "[link=https://x]y", "\x1b[2J", "../../etc/passwd"]),
    st.sampled_from([RawToml("1979-05-27T07:32:00Z"), RawToml("1979-05-27"), RawToml("07:32:00")]),
)
wrong = st.one_of(scalars, st.lists(scalars, max_size=3), st.dictionaries(st.text(max_size=4), scalars, max_size=2))
"""A value of any shape, one level deep: cheap to draw, which keeps thousands of examples in seconds."""


def fields(spec: Dict[str, st.SearchStrategy]) -> st.SearchStrategy:
    """A table whose known keys hold a plausible value or anything at all, plus now and then an unknown key."""
    extra = st.one_of(st.just({}), st.dictionaries(st.text(max_size=8), wrong, min_size=1, max_size=1))
    return st.tuples(st.fixed_dictionaries({}, optional={k: st.one_of(v, v, v, wrong) for k, v in spec.items()}),
                     extra).map(lambda t: {**t[0], **t[1]})


def mutated(text: str) -> st.SearchStrategy:
    """Byte-level edits of a valid file: cut, insert, overwrite (non-UTF-8 bytes included)."""
    base = text.encode()

    def edit(ops: List[tuple]) -> bytes:
        data = bytearray(base)
        for kind, pos, blob in ops:
            pos = pos % (len(data) + 1)
            if kind == 0:
                del data[pos:pos + len(blob) + 1]
            elif kind == 1:
                data[pos:pos] = blob
            else:
                data[pos:pos + len(blob)] = blob
        return bytes(data)

    return st.lists(st.tuples(st.integers(0, 2), st.integers(0, 10 ** 6), st.binary(min_size=1, max_size=6)),
                    min_size=1, max_size=4).map(edit)


def assert_clean(load: Callable[[], Any]) -> Any:
    """The property: a value or an EdgekitError; anything else fails the test with the example."""
    try:
        return load()
    except EdgekitError as exc:
        # A message may quote a hostile key with a newline in it; the CLI folds it onto its one
        # error line (tests/test_hostile_input.py checks that), so here it need only say something.
        assert exc.message.strip()
        return None


# ------------------------------------------------------------------------------------------------
# edgekit.toml
# ------------------------------------------------------------------------------------------------
name_like = st.one_of(st.sampled_from(["tiny", "board", "a.b-c_d", "x86-avx2"]), st.text(max_size=12))
number_like = st.one_of(st.integers(-5, 100), st.floats(-1, 2), st.sampled_from([0.99, 1, 0, -1]))
CONFIG = fields({
    "seed": st.integers(-3, 3), "targets": st.lists(name_like, max_size=3),
    "model": fields({"name": name_like, "source": st.sampled_from(["torch", "hf", "onnx", "tflite", "x"]),
                     "factory": st.sampled_from(["model.py:build", "x", ":"]), "path": st.sampled_from(["m.onnx", "pkg:"]),
                     "opset": st.integers(0, 30), "export_tolerance": number_like, "task": name_like}),
    "inputs": st.lists(fields({"name": name_like, "shape": st.lists(st.integers(-2, 64), max_size=4),
                               "dtype": st.sampled_from(["float32", "int64", "complex"]),
                               "dynamic_axes": st.dictionaries(st.sampled_from(["0", "1", "x", "-1"]), name_like, max_size=2)}),
                       max_size=3),
    "calibration": fields({"data": st.sampled_from(["calib.npz", "/dev/null"]), "text": st.just("t.txt"),
                           "max_samples": st.integers(-1, 500), "labels": name_like}),
    "validation": fields({"data": st.just("val.npz"), "metric": st.sampled_from(["top1", "topk", "cosine", "psnr", "bad"]),
                          "threshold": number_like, "k": st.integers(-1, 10),
                          "pooling": st.sampled_from(["none", "mean", "max"]),
                          "also": st.dictionaries(st.sampled_from(["psnr", "max_abs", "nope"]), number_like, max_size=2)}),
    "devices": st.lists(fields({"name": name_like, "target": name_like, "transport": st.sampled_from(["local", "ssh", "x"]),
                                "host": name_like, "port": st.integers(-1, 70000), "path": name_like,
                                "python": name_like, "groups": st.lists(name_like, max_size=2)}), max_size=3),
    "deploy": fields({"keep_releases": st.integers(-1, 5), "max_parallel": st.integers(-1, 5),
                      "known_hosts": name_like, "inventory": name_like}),
    "power": fields({"sampler": st.sampled_from(["auto", "none", "rapl", "estimate", "bogus"]), "rate_hz": number_like,
                     "idle_s": number_like, "requests_per_s": number_like, "grid_g_per_kwh": number_like}),
})
VALID_CONFIG = """[model]
name = "tiny"
source = "onnx"
path = "model.onnx"
opset = 17

[[inputs]]
name = "x"
shape = [1, 16]
dynamic_axes = { 0 = "batch" }

[calibration]
data = "calib.npz"

[validation]
data = "calib.npz"
threshold = 0.99
also = { psnr = 30 }

[[devices]]
name = "board"
target = "x86-avx2"
transport = "ssh"
host = "pi.lan"
port = 22

[power]
rate_hz = 10
"""


def _load_config(path: Path) -> Any:
    from edgekit.config import load
    from edgekit.validate import power_settings

    cfg = load(path)
    power_settings(cfg)  # the CLI's next step for validate: [power] re-checked with the options
    return cfg


@seeded
@FUZZ
@given(doc=st.one_of(CONFIG.map(toml_document).map(str.encode), mutated(VALID_CONFIG)))
def test_fuzz_edgekit_toml(scratch: Path, doc: bytes) -> None:
    path = scratch / "edgekit.toml"
    path.write_bytes(doc)
    assert_clean(lambda: _load_config(path))


def test_valid_config_seed_is_valid(scratch: Path) -> None:
    """The mutation seed must itself load, or the mutations would only ever test the error path."""
    path = scratch / "edgekit.toml"
    path.write_text(VALID_CONFIG)
    assert _load_config(path).devices[0].port == 22


# ------------------------------------------------------------------------------------------------
# Target profiles
# ------------------------------------------------------------------------------------------------
def _profile_text() -> str:
    from edgekit.targets import targets_dir

    return (targets_dir() / "x86-avx2.toml").read_text()


PROFILE = fields({
    "name": st.just("fuzz"), "family": name_like, "description": st.text(max_size=10), "arch": name_like,
    "cpu": name_like, "isa_features": st.lists(name_like, max_size=3), "graph_optimization": st.sampled_from(["basic", "all", "x"]),
    "intra_op_threads": st.integers(-1, 8), "power_sensor": name_like, "nominal_watts_per_core": number_like,
    "min_python": st.sampled_from(["3.8", "3", "x"]), "family_default": st.booleans(),
    "runtime": fields({"name": st.sampled_from(["onnxruntime", "tflite", "x"]),
                       "providers": st.lists(st.sampled_from(["CPUExecutionProvider", "X"]), max_size=2)}),
    "quantization": fields({"format": st.sampled_from(["QDQ", "QOperator", "x"]),
                            "activation_type": st.sampled_from(["QUInt8", "QInt8", "x"]),
                            "weight_type": st.sampled_from(["QUInt8", "QInt8"]), "per_channel": st.booleans(),
                            "reduce_range": st.booleans(), "calibration_method": st.sampled_from(["MinMax", "Entropy", "x"]),
                            "type_candidates": st.lists(st.lists(st.sampled_from(["QUInt8", "QInt8"]), max_size=3), max_size=2),
                            "precisions": st.lists(st.sampled_from(["int8", "fp16", "fp32", "x"]), max_size=3)}),
})


@seeded
@FUZZ
@given(data=st.data())
def test_fuzz_target_profile(scratch: Path, data: st.DataObject) -> None:
    from edgekit.targets import load_profile

    doc = data.draw(st.one_of(PROFILE.map(toml_document).map(str.encode), mutated(_profile_text().replace(
        'name = "x86-avx2"', 'name = "fuzz"'))))
    path = scratch / "fuzz.toml"
    path.write_bytes(doc)
    assert_clean(lambda: load_profile(path))


# ------------------------------------------------------------------------------------------------
# Ansible inventories (INI and YAML), through the module's public loader
# ------------------------------------------------------------------------------------------------
host_token = st.one_of(st.sampled_from(["pi-01", "web[01:03]", "db[a:c]", "x[0:4:2]", "[1:2]", "h[9:1]", "h[0:3:0]",
                                        "10.0.0.1", "h:22", "'quoted host'", "\"q\"", "#c", ";c"]), st.text(max_size=10))
var_token = st.one_of(st.sampled_from(["ansible_host=10.0.0.2", "ansible_port=2222", "ansible_port=70000",
                                       "ansible_port=x", "ansible_user=pi", "edgekit_target=x86-avx2",
                                       "ansible_python_interpreter=/usr/bin/python3", "ansible_password=s",
                                       "edgekit_path=~/e", "k=", "=v", "novalue"]), st.text(max_size=10))
ini_line = st.one_of(
    st.tuples(host_token, st.lists(var_token, max_size=3)).map(lambda t: " ".join([t[0], *t[1]])),
    st.sampled_from(["[pis]", "[pis:vars]", "[pis:children]", "[all:vars]", "[x:bogus]", "[]", "[", "edgekit_target=rpi"]),
    st.text(max_size=20))
yaml_doc = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-3, 70000), st.text(max_size=8),
              st.sampled_from(["x86-avx2", "web[01:03]", "[1:2]"])),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.one_of(st.sampled_from(["all", "hosts", "vars", "children", "pis",
                                                                       "ansible_port", "edgekit_target"]),
                                                      st.text(max_size=6)), inner, max_size=4)),
    max_leaves=15)
VALID_INI = "[pis]\npi-[01:02] ansible_host=10.0.0.1 ansible_user=pi\n[pis:vars]\nedgekit_target=raspberry-pi-5\n"


def _yaml(doc: Any) -> bytes:
    import yaml

    return yaml.safe_dump(doc, allow_unicode=True).encode()


@pytest.fixture(scope="module")
def builtin_inventory() -> Any:
    """The built-in reader: the ansible-inventory engine costs a subprocess (about a second) per example."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EDGEKIT_INVENTORY_ENGINE", "builtin")
        yield


@seeded
@FUZZ
@given(data=st.data())
def test_fuzz_inventory(scratch: Path, builtin_inventory: None, data: st.DataObject) -> None:
    # The pre-rewrite inventory.py (a single module) crashes on non-UTF-8 bytes and zero-step ranges;
    # the rewrite on branch `inventory` (inventory.py + inventory_parse.py) handles them. Until both
    # are merged this test only runs against the rewrite.
    pytest.importorskip("edgekit.transport.inventory_parse", reason="needs the inventory rewrite (branch inventory)")
    from edgekit.transport import inventory

    kind = data.draw(st.sampled_from(["ini", "yaml", "mutated"]))
    if kind == "ini":
        raw = "\n".join(data.draw(st.lists(ini_line, max_size=8))).encode()
    elif kind == "yaml":
        raw = _yaml(data.draw(st.one_of(yaml_doc, st.fixed_dictionaries({"all": yaml_doc}))))
    else:
        raw = data.draw(mutated(VALID_INI))
    path = scratch / ("inventory.yml" if kind == "yaml" else "inventory.ini")
    path.write_bytes(raw)

    def load() -> Any:
        inv = inventory.load_inventory(path)
        return inv.devices()  # what select_devices asks of it

    assert_clean(load)


# ------------------------------------------------------------------------------------------------
# Result JSON from a device, and what the CLI and the report do with an accepted one
# ------------------------------------------------------------------------------------------------
json_scalar = st.one_of(st.none(), st.booleans(), st.integers(-(2 ** 70), 2 ** 70), st.floats(allow_nan=False, allow_infinity=False),
                        st.text(max_size=20), st.sampled_from(["inf", "nan", "-inf", "[/]", "[link=https://x]y[/link]",
                                                               "\x1b]0;t\x07", "<script>", "$\\frac{$", "%s%n"]))
json_any = st.one_of(json_scalar, st.lists(json_scalar, max_size=4), st.dictionaries(st.text(max_size=8), json_scalar, max_size=3),
                    st.lists(st.lists(json_scalar, max_size=2), max_size=2))


def _obj(spec: Dict[str, st.SearchStrategy]) -> st.SearchStrategy:
    return st.fixed_dictionaries({}, optional={k: st.one_of(v, v, v, json_any) for k, v in spec.items()})


num = st.one_of(st.floats(-1e3, 1e3), st.integers(-5, 1000), st.sampled_from(["inf", "nan"]))
RESULT = _obj({
    "schema": st.just(2), "ok": st.booleans(), "started": st.text(max_size=20), "release_id": st.text(max_size=10),
    "target": st.text(max_size=10),
    "metric": _obj({"name": st.sampled_from(["top1", "cosine", "psnr"]), "value": num, "threshold": num, "passed": st.booleans(),
                    "min": num, "n": st.integers(0, 10),
                    "also": st.lists(_obj({"name": st.text(max_size=5), "value": num, "threshold": num,
                                           "passed": st.booleans()}), max_size=2)}),
    "metrics": st.dictionaries(st.sampled_from(["top1", "cosine", "psnr_db", "max_abs"]), st.one_of(num, st.none()), max_size=3),
    "latency": _obj({"p50_ms": num, "p90_ms": num, "p99_ms": num, "mean_ms": num, "min_ms": num, "iterations": st.integers(0, 9),
                     "samples_ms": st.lists(st.floats(0, 100), max_size=20), "first_load_ms": num, "window_s": num}),
    "power": st.one_of(st.none(), _obj({
        "sampler": st.sampled_from(["estimate", "rapl", None]), "is_estimate": st.booleans(), "reason": st.text(max_size=10),
        "energy_per_inference_mj": st.floats(0, 1e6), "energy_per_inference_above_idle_mj": st.floats(0, 1e3),
        "mean_power_w": st.floats(0, 100), "idle_power_w": st.floats(0, 100),
        "trace": st.lists(st.lists(st.floats(-5, 5), min_size=2, max_size=3), max_size=10),
        "window": st.lists(st.floats(0, 5), min_size=2, max_size=2), "warnings": st.lists(st.text(max_size=10), max_size=2),
        "carbon": _obj({"g_per_1000_inferences": st.floats(0, 10), "g_per_day_at_rps": st.floats(0, 10),
                        "requests_per_s": st.floats(0, 10), "grid_g_per_kwh": st.floats(0, 900)})})),
    "memory": _obj({"peak_rss_mb": num}), "runtime": _obj({"name": st.text(max_size=8), "version": st.text(max_size=5),
                                                            "provider": st.text(max_size=20)}),
    "versions": st.dictionaries(st.text(max_size=5), st.one_of(st.text(max_size=5), num), max_size=2),
    "device": st.dictionaries(st.text(max_size=5), json_any, max_size=2),
    "error": st.one_of(st.none(), _obj({"kind": st.text(max_size=5), "message": st.text(max_size=30), "hint": st.text(max_size=10)})),
    "host": _obj({"device": st.text(max_size=10)}),
})


def _render_everything(data: Dict[str, Any], path: Path) -> None:
    """What `edgekit validate` prints and what `edgekit report` writes, for an accepted result."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from edgekit.cli import device as cli_device
    from edgekit.cli import render
    from edgekit.report import summarize
    from edgekit.report.render import to_html, to_markdown
    from edgekit.report.runs import read_run
    from edgekit.validate import ValidationResult

    res = ValidationResult.from_run("board", data, path)
    rows = cli_device._validation_rows(res)
    buf = io.StringIO()
    t = Table(title=Text(render.clean("validation")))
    t.add_column("field")
    t.add_column("value")
    for k, v in rows:
        t.add_row(Text(render.clean(k)), Text(render.clean(v)))
    Console(file=buf, width=120, force_terminal=True).print(t)
    assert "\x1b]" not in buf.getvalue()  # no OSC (hyperlinks, titles) from device strings
    path.write_text(json.dumps(data))
    run = read_run(path)
    summarize([run])
    to_markdown([run], [run], "now")
    to_html([run], [run], [], "now")


@seeded
@FUZZ
@given(data=st.data())
def test_fuzz_result_json(scratch: Path, data: st.DataObject) -> None:
    from edgekit.report.schema import RunFileError, parse_result

    kind = data.draw(st.sampled_from(["structured", "any", "bytes"]))
    if kind == "structured":
        raw = json.dumps(data.draw(RESULT)).encode()
    elif kind == "any":
        raw = json.dumps(data.draw(json_any)).encode()
    else:
        base = json.dumps({"schema": 2, "ok": True, "metric": {"value": 1.0, "passed": True}, "latency": {"p50_ms": 1.0}})
        raw = data.draw(st.one_of(mutated(base), st.binary(max_size=64),
                                  st.integers(1, 3000).map(lambda n: b'{"schema": 2, "x": ' + b"[" * n + b"]" * n + b"}")))
    try:
        accepted = parse_result(raw)
    except RunFileError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    _render_everything(accepted, scratch / "run.json")


@seeded
@settings(FUZZ, max_examples=max(30, EXAMPLES // 10))
@given(runs=st.lists(RESULT, min_size=1, max_size=3))
def test_fuzz_report_with_plots(scratch: Path, runs: List[Dict[str, Any]]) -> None:
    """The whole `edgekit report` on accepted results, plots included (matplotlib is slow: a tenth
    of the examples). Bad run files are skipped with a warning; the rest must render."""
    import warnings

    from edgekit.report import build_report, load_runs

    folder = scratch / "runs"
    folder.mkdir(exist_ok=True)
    for old in folder.iterdir():
        old.unlink()
    for i, run in enumerate(runs):
        (folder / f"2025010{i}T000000Z-d{i}.json").write_text(json.dumps(run))
    skipped: List[str] = []
    try:
        records = load_runs(runs_dir=folder, warn=skipped.append)
    except EdgekitError:
        assert len(skipped) == len(runs)  # every file was bad: one clear error
        return
    assert len(records) + len(skipped) == len(runs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # matplotlib's overflow and empty-legend warnings
        build_report(records, scratch / "out")
