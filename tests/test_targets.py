"""Every file in targets/ loads through the one schema, and every profile has a test case here."""
from __future__ import annotations

from pathlib import Path

import pytest

from edgekit import targets
from edgekit.errors import TargetError

# The facts each profile must declare (ISA facts per onnxruntime's quantization docs).
EXPECTED = {
    "raspberry-pi-4": dict(arch="aarch64", has=["asimd"], lacks=["asimddp"], act="QUInt8", reduce_range=False,
                           extra_types=[("QInt8", "QInt8")], gpu=False),
    "raspberry-pi-5": dict(arch="aarch64", has=["asimd", "asimddp"], lacks=[], act="QUInt8", reduce_range=False,
                           extra_types=[("QInt8", "QInt8")], gpu=False),
    "jetson-orin-nano": dict(arch="aarch64", has=["asimddp"], lacks=[], act="QInt8", reduce_range=False,
                             extra_types=[], gpu=True),
    "jetson-nano": dict(arch="aarch64", has=["asimd"], lacks=["asimddp"], act="QInt8", reduce_range=False,
                        extra_types=[], gpu=True),
    "x86-avx512-vnni": dict(arch="x86_64", has=["avx512_vnni"], lacks=[], act="QUInt8", reduce_range=False,
                            extra_types=[], gpu=False),
    "x86-avx2": dict(arch="x86_64", has=["avx2"], lacks=["avx512_vnni"], act="QUInt8", reduce_range=True,
                     extra_types=[("QUInt8", "QUInt8")], gpu=False),
}


def test_every_target_file_has_a_case() -> None:
    assert set(targets.load_all()) == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_profile_facts(name: str) -> None:
    p = targets.load_all()[name]
    want = EXPECTED[name]
    assert p.arch == want["arch"]
    assert set(want["has"]) <= set(p.isa_features)
    assert not set(want["lacks"]) & set(p.isa_features)
    assert p.quantization.activation_type == want["act"]
    assert p.quantization.weight_type == "QInt8"
    assert p.quantization.reduce_range is want["reduce_range"]
    assert [tuple(t) for t in p.quantization.type_candidates] == want["extra_types"]
    assert p.is_gpu is want["gpu"]
    if p.is_gpu:  # TensorRT first, then CUDA, then CPU; symmetric int8 as TensorRT expects; fp16 candidate
        assert p.runtime.providers == ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
        assert p.quantization.symmetric_activations and p.quantization.symmetric_weights
        assert "fp16" in p.quantization.precisions
    else:
        assert p.runtime.providers[-1] == "CPUExecutionProvider"
    assert tuple(int(x) for x in p.min_python.split(".")) >= (3, 8)


def test_jetson_nano_runs_python_38() -> None:
    assert targets.load_all()["jetson-nano"].min_python == "3.8"


@pytest.mark.parametrize("family,expected", [("jetson", "jetson-orin-nano"), ("rpi", "raspberry-pi-5"),
                                             ("raspberry-pi", "raspberry-pi-5")])
def test_family_defaults(family: str, expected: str) -> None:
    assert targets.resolve(family).name == expected


@pytest.mark.parametrize("flags,expected", [
    ({"avx2", "fma", "avx512f", "avx512bw", "avx512_vnni"}, "x86-avx512-vnni"),
    ({"avx2", "fma"}, "x86-avx2"),
])
def test_x86_follows_host_flags(flags: set, expected: str) -> None:
    assert targets.resolve("x86", host_flags=flags).name == expected


def test_unknown_target_lists_known_ones() -> None:
    with pytest.raises(TargetError) as exc:
        targets.resolve("jetsn")
    assert "unknown target 'jetsn'" in str(exc.value)
    for name in EXPECTED:
        assert name in str(exc.value)


def _write(tmp_path: Path, name: str, body: str) -> Path:
    d = tmp_path / "targets"
    d.mkdir(exist_ok=True)
    (d / f"{name}.toml").write_text(body)
    return d


BASE = 'name = "{n}"\nfamily = "x86"\ndescription = "d"\narch = "x86_64"\ncpu = "c"\n'


def test_unknown_key_names_file_and_key(tmp_path: Path) -> None:
    d = _write(tmp_path, "bad", BASE.format(n="bad") + "[quantization]\nreduce_rnage = true\n")
    with pytest.raises(TargetError) as exc:
        targets.load_all(d)
    msg = str(exc.value)
    assert "bad.toml" in msg and "quantization.reduce_rnage" in msg and "unknown key" in msg


def test_malformed_toml_names_line(tmp_path: Path) -> None:
    d = _write(tmp_path, "broken", BASE.format(n="broken") + "arch = \n")
    with pytest.raises(TargetError) as exc:
        targets.load_all(d)
    assert "broken.toml" in str(exc.value) and "line 6" in str(exc.value)


def test_name_must_match_file(tmp_path: Path) -> None:
    d = _write(tmp_path, "one", BASE.format(n="two"))
    with pytest.raises(TargetError, match="expected the file name 'one'"):
        targets.load_all(d)


def test_wrong_value_type(tmp_path: Path) -> None:
    d = _write(tmp_path, "t", BASE.format(n="t") + "intra_op_threads = -1\n")
    with pytest.raises(TargetError, match="intra_op_threads"):
        targets.load_all(d)


# ----------------------------------------------------------------------------------------------
# The x86 family on hosts that match no x86 profile
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("flags", [
    set(),  # flags unknown (no /proc/cpuinfo)
    {"sse4_2", "avx"},  # an x86 CPU without AVX2
    {"fp", "asimd", "asimddp"},  # an ARM build host
])
def test_x86_falls_back_to_the_lowest_common_profile(flags: set) -> None:
    assert targets.X86_FALLBACK == "x86-avx2"
    assert targets.resolve("x86", host_flags=flags).name == "x86-avx2"


def test_x86_fallback_uses_the_host_flags_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(targets, "host_cpu_flags", lambda: {"fp", "asimd"})
    assert targets.resolve("x86").name == "x86-avx2"
    monkeypatch.setattr(targets, "host_cpu_flags", lambda: {"avx2", "fma", "avx512f", "avx512bw", "avx512_vnni"})
    assert targets.resolve("x86").name == "x86-avx512-vnni"


def test_x86_fallback_without_the_named_profile(tmp_path: Path) -> None:
    """A custom targets directory without x86-avx2: the x86 member with the fewest ISA features."""
    d = _write(tmp_path, "x86-big", BASE.format(n="x86-big") + 'isa_features = ["avx2", "avx512f"]\n')
    _write(tmp_path, "x86-small", BASE.format(n="x86-small") + 'isa_features = ["sse4_2"]\n')
    assert targets.resolve("x86", d, host_flags=set()).name == "x86-small"


# ----------------------------------------------------------------------------------------------
# `edgekit targets list` / `edgekit targets show`
# ----------------------------------------------------------------------------------------------
def _toml_profiles() -> dict:
    """{name: raw TOML table} straight from the files, independent of edgekit's loader."""
    files = sorted(targets.targets_dir().glob("*.toml"))
    return {t["name"]: t for t in (targets.tomllib.loads(f.read_text()) for f in files)}


def _invoke(*args: str):
    from click.testing import CliRunner

    from edgekit.cli import main

    return CliRunner().invoke(main, list(args))


def test_cli_targets_list_shows_every_profile() -> None:
    files = _toml_profiles()
    assert len(files) == 6
    result = _invoke("targets", "list")
    assert result.exit_code == 0, result.output
    rows = {line.split("│")[1].strip().rstrip(" *") for line in result.stdout.splitlines() if line.startswith("│")}
    rows.discard("")  # continuation lines of wrapped cells
    assert rows == set(files)
    for name, raw in files.items():  # family defaults carry the marker
        assert (f"{name} *" in result.stdout) is bool(raw.get("family_default", False))


def test_cli_targets_list_json() -> None:
    import json

    result = _invoke("targets", "list", "--json")
    assert result.exit_code == 0, result.output
    listed = json.loads(result.stdout)
    assert set(listed) == set(_toml_profiles())
    assert all(listed[n]["name"] == n for n in listed)


def _same(raw: object, shown: object) -> bool:
    """The TOML value equals the JSON one (TOML arrays of pairs come back as JSON lists)."""
    if isinstance(raw, dict):
        return isinstance(shown, dict) and all(k in shown and _same(v, shown[k]) for k, v in raw.items())
    if isinstance(raw, (list, tuple)):
        return isinstance(shown, list) and len(raw) == len(shown) and all(_same(a, b) for a, b in zip(raw, shown))
    return raw == shown


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_cli_targets_show_json_round_trips(name: str) -> None:
    import json

    result = _invoke("targets", "show", name, "--json")
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert targets.TargetProfile.model_validate(shown) == targets.load_all()[name]  # every field, defaults too
    assert _same(_toml_profiles()[name], shown)  # and every value the file sets, as written


def test_cli_targets_show_table() -> None:
    result = _invoke("targets", "show", "jetson-orin-nano")
    assert result.exit_code == 0, result.output
    p = targets.load_all()["jetson-orin-nano"]
    assert "jetson-orin-nano" in result.stdout and p.arch in result.stdout
    assert " > ".join(p.runtime.providers) in result.stdout


def test_cli_targets_show_family_resolves(monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    monkeypatch.setattr(targets, "host_cpu_flags", lambda: set())
    result = _invoke("targets", "show", "x86", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["name"] == "x86-avx2"


def test_cli_targets_show_unknown_is_one_clear_line() -> None:
    result = _invoke("targets", "show", "jetsn")
    assert result.exit_code == 3  # TargetError
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: unknown target 'jetsn'")
    assert "Traceback" not in result.output and "x86-avx2" in lines[0]
