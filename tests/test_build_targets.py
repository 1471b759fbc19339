"""Registry coverage: every target profile builds a real model, and every exporter has an
end-to-end test (Optimum's test_all_models_tested idea)."""
from __future__ import annotations

import typing
from pathlib import Path

import pytest

from edgekit import artifact, config, targets
from edgekit.build import build
from edgekit.config import ModelSpec
from edgekit.export import EXPORTERS

# exporter -> the test that builds a real model through it
EXPORTER_TESTS = {
    "torch": "tests/test_build.py::test_digits_bundle_is_complete_and_verified",
    "hf": "tests/test_e2e_samples.py::test_minilm_build_deploy_validate",
    "onnx": "tests/test_build.py::test_onnx_passthrough_builds",
    "tflite": "tests/test_tflite_build.py::test_tflite_build_deploy_validate",
}


def test_every_exporter_is_registered_and_tested() -> None:
    sources = set(typing.get_args(ModelSpec.model_fields["source"].annotation))
    assert set(EXPORTERS) == sources == set(EXPORTER_TESTS)
    root = Path(__file__).resolve().parent.parent
    for node in EXPORTER_TESTS.values():
        file, _, name = node.partition("::")
        assert f"def {name}(" in (root / file).read_text(), node


@pytest.mark.parametrize("name", sorted(targets.load_all()))
def test_every_target_builds_the_digits_sample(name: str, digits_project: Path, tmp_path: Path) -> None:
    profile = targets.load_all()[name]
    cfg = config.load(digits_project / "edgekit.toml")
    result = build(cfg, profile, tmp_path)
    manifest = artifact.verify_bundle(result.bundle)
    q = manifest["quantization"]
    assert manifest["target"] == name
    assert result.precision in profile.quantization.precisions
    assert manifest["runtime"]["providers"] == profile.runtime.providers
    assert result.metric["value"] >= cfg.validation.threshold
    if result.precision == "int8":
        # the preset recorded is the profile's ISA-aware one (ARM may keep its other type pair)
        pairs = [(profile.quantization.activation_type, profile.quantization.weight_type)]
        pairs += [tuple(t) for t in profile.quantization.type_candidates]
        if q["method"].startswith("static"):
            assert (q["preset"]["activation_type"], q["preset"]["weight_type"]) in pairs
            if profile.is_gpu:  # TensorRT wants symmetric int8
                assert q["preset"]["symmetric_activations"] and q["preset"]["symmetric_weights"]
