"""Every file in targets/ loads through the one schema, and every profile has a test case here."""
from __future__ import annotations

import re
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
    lines = result.stdout.splitlines()  # piped: a plain table, one line per row, cells 2+ blanks apart
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["name", "family"])
    rows = {re.split(r"\s{2,}", line)[0].rstrip(" *") for line in lines[header + 1:] if not line.startswith("* ")}
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


# ----------------------------------------------------------------------------------------------
# A project's own targets: targets/<name>.toml beside edgekit.toml, or the folder targets_dir names
# ----------------------------------------------------------------------------------------------
ORANGE = ('name = "orange-pi-5"\nfamily = "rockchip"\ndescription = "RK3588S, 4x A76 + 4x A55"\n'
          'arch = "aarch64"\ncpu = "cortex-a76"\nisa_features = ["asimd", "asimddp"]\n'
          '[quantization]\ntype_candidates = [["QInt8", "QInt8"]]\n')


def _project(tmp_path: Path, extra: str = "") -> Path:
    (tmp_path / "edgekit.toml").write_text(
        'targets = ["orange-pi-5"]\n' + extra + '[model]\nname = "m"\nsource = "onnx"\npath = "m.onnx"\n'
        '[[inputs]]\nname = "x"\nshape = [1, 4]\n[calibration]\ndata = "c.npz"\n'
        '[validation]\ndata = "v.npz"\nmetric = "cosine"\nthreshold = 0.99\n')
    return tmp_path / "edgekit.toml"


def test_project_targets_merge_over_the_builtins(tmp_path: Path) -> None:
    import json

    from edgekit import config

    cfg_path = _project(tmp_path)
    _write(tmp_path, "orange-pi-5", ORANGE)
    _write(tmp_path, "raspberry-pi-5", ORANGE.replace("orange-pi-5", "raspberry-pi-5").replace("rockchip", "raspberry-pi"))
    dirs = config.load(cfg_path).target_dirs()
    assert dirs == [tmp_path / "targets"]
    assert targets.resolve("orange-pi-5", project_dirs=dirs).cpu == "cortex-a76"
    # the project's file replaces the built-in of the same name, and says so
    entries = targets.catalog(project_dirs=dirs)
    assert entries["raspberry-pi-5"].replaces == targets.targets_dir() / "raspberry-pi-5.toml"
    assert entries["raspberry-pi-5"].profile.description.startswith("RK3588S")
    assert entries["x86-avx2"].origin == "built-in"

    listed = _invoke("targets", "list", "--config", str(cfg_path), "--json")
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.stdout)
    assert set(rows) == set(EXPECTED) | {"orange-pi-5"}
    assert rows["orange-pi-5"]["source"] == str(tmp_path / "targets" / "orange-pi-5.toml")
    assert rows["raspberry-pi-5"]["source"].endswith("raspberry-pi-5.toml (overrides the built-in)")
    assert rows["jetson-nano"]["source"] == "built-in"
    table = _invoke("targets", "list", "--config", str(cfg_path))
    assert table.exit_code == 0 and "overrides the built-in" in table.stdout
    shown = _invoke("targets", "show", "orange-pi-5", "--config", str(cfg_path))
    assert shown.exit_code == 0 and "orange-pi-5.toml" in shown.stdout
    # without the project file, only the built-ins are known
    assert _invoke("targets", "show", "orange-pi-5").exit_code == 3


def test_targets_dir_setting_and_its_errors(tmp_path: Path) -> None:
    from edgekit import config
    from edgekit.errors import ConfigError

    boards = tmp_path / "boards"
    boards.mkdir()
    (boards / "orange-pi-5.toml").write_text(ORANGE)
    cfg = config.load(_project(tmp_path, 'targets_dir = "boards"\n'))
    assert targets.resolve("orange-pi-5", project_dirs=cfg.target_dirs()).name == "orange-pi-5"

    missing = config.load(_project(tmp_path, 'targets_dir = "nowhere"\n'))
    with pytest.raises(ConfigError, match="targets_dir"):
        missing.target_dirs()
    (boards / "orange-pi-5.toml").write_text(ORANGE + "bogus = 1\n")
    result = _invoke("targets", "list", "--config", str(_project(tmp_path, 'targets_dir = "boards"\n')))
    assert result.exit_code == 3 and "orange-pi-5.toml" in result.stderr and "bogus" in result.stderr


def test_a_project_target_builds(digits_project: Path, tmp_path: Path) -> None:
    """`edgekit build --target <project target>` resolves it from the project, notes an override."""
    import json
    import shutil

    project = tmp_path / "digits"
    shutil.copytree(digits_project, project, ignore=shutil.ignore_patterns("dist", ".device", "runs"))
    _write(project, "orange-pi-5", ORANGE)
    _write(project, "raspberry-pi-4", ORANGE.replace("orange-pi-5", "raspberry-pi-4").replace("rockchip", "raspberry-pi"))
    result = _invoke("build", "--config", str(project / "edgekit.toml"), "--target", "orange-pi-5",
                     "--target", "raspberry-pi-4")
    assert result.exit_code == 0, result.output
    assert "raspberry-pi-4.toml, which overrides the built-in profile" in result.stderr
    manifest = json.loads((project / "dist" / "digits" / "orange-pi-5" / "manifest.json").read_text())
    assert manifest["target"] == "orange-pi-5" and manifest["target_profile"]["cpu"] == "cortex-a76"
