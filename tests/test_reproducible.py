"""A rebuild is byte-identical: the same inputs, seed and edgekit version give the same bundle,
manifest.json included, also where this host's CPU matches the target and timing takes part in the
choice. Measurements go to the build record beside the bundle, never into the release."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Dict

import pytest
from click.testing import CliRunner

from edgekit import artifact, build_record, targets
from edgekit.cli import main

VNNI_HOST = "avx2 fma avx512f avx512bw avx512_vnni"
AVX2_HOST = "avx2 fma"


def _files(bundle: Path) -> Dict[str, bytes]:
    return {p.relative_to(bundle).as_posix(): p.read_bytes() for p in sorted(bundle.rglob("*")) if p.is_file()}


def _build(project: Path, *extra: str) -> dict:
    result = CliRunner().invoke(main, ["build", "--target", "x86", "--config", str(project / "edgekit.toml"),
                                       "--json", *extra])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.mark.parametrize("host", [VNNI_HOST, AVX2_HOST], ids=["vnni-host", "avx2-host"])
def test_two_x86_builds_are_byte_identical(digits_project: Path, tmp_path: Path, host: str,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(targets.HOST_FLAGS_ENV, host)
    monkeypatch.setenv(targets.HOST_ARCH_ENV, "x86_64")
    project = tmp_path / "digits"
    shutil.copytree(digits_project, project, ignore=shutil.ignore_patterns("dist", ".device", "runs"))
    expected = "x86-avx512-vnni" if "avx512_vnni" in host else "x86-avx2"

    first = _build(project)
    assert first["target"] == expected
    bundle = Path(first["bundle"])
    before = _files(bundle)
    record_path = build_record.record_path(bundle)
    record = json.loads(record_path.read_text())
    assert record["release_id"] == first["release_id"] and record["seconds"] > 0
    # this host's CPU matches the resolved profile, so the candidates were timed, into the record
    assert record["latency_ms"]["host_matches_target"] is True
    assert any(isinstance(v, float) for v in record["latency_ms"].values())
    assert record["timings"] and "measured" in record["timing_memo"]

    manifest = json.loads(before["manifest.json"])
    text = before["manifest.json"].decode()
    assert "p50_ms" not in text and "latency_ms" not in text and "seconds" not in text
    assert manifest["release_id"] == artifact.release_id(manifest)
    assert set(manifest["files"]) == set(before) - {"manifest.json"}

    second = _build(project)
    assert _files(bundle) == before  # every byte, manifest.json included
    assert second["release_id"] == first["release_id"]
    assert "reused" in second["timing_note"] and second["timing_note"].endswith("afresh")

    third = _build(project, "--remeasure")  # measured again: the record says so
    assert "reused" not in third["timing_note"] and "measured" in third["timing_note"]


def test_the_release_id_covers_the_manifest(digits_bundle: Path) -> None:
    manifest = artifact.read_manifest(digits_bundle)
    assert manifest["release_id"] == artifact.release_id(manifest)
    for change in ({"metric": {"name": "top1", "threshold": 0.5}}, {"target": "x86-avx2"},
                   {"files": {**manifest["files"], "runner.py": "0" * 64}}):
        assert artifact.release_id({**manifest, **change}) != manifest["release_id"], change
    assert len(manifest["release_id"]) == artifact.RELEASE_ID_LENGTH


def test_a_record_from_another_version_is_not_reused(tmp_path: Path) -> None:
    bundle = tmp_path / "dist" / "m" / "t"
    bundle.mkdir(parents=True)
    path = build_record.record_path(bundle)
    memo = {"k": {"rounds": {"a": [1.0]}}}
    path.write_text(json.dumps({"schema": build_record.SCHEMA, "edgekit_version": "0.0.0-other", "timings": memo}))
    assert build_record.read_timings(bundle) == {}
    from edgekit import __version__

    path.write_text(json.dumps({"schema": build_record.SCHEMA, "edgekit_version": __version__, "timings": memo}))
    assert build_record.read_timings(bundle) == memo
    path.write_text("{not json")
    assert build_record.read_timings(bundle) == {}
