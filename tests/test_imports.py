"""`edgekit --help` must start fast: it may not import the heavy libraries (click's test_imports idea)."""
from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ["torch", "onnxruntime", "transformers", "optimum", "onnx", "paramiko", "matplotlib", "sklearn"]


def _modules_after(args: list) -> set:
    code = ("import sys, json\nfrom edgekit.cli import main\n"
            "try:\n    main(%r, standalone_mode=False)\nexcept SystemExit:\n    pass\n"
            "print(json.dumps(sorted(sys.modules)))" % (args,))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(json.loads(out.strip().splitlines()[-1]))


def test_help_imports_no_heavy_library() -> None:
    loaded = _modules_after(["--help"])
    assert "edgekit.cli" in loaded  # the probe really ran the CLI
    assert not {m for m in loaded if m.split(".")[0] in HEAVY}


def test_every_subcommand_help_is_light() -> None:
    from edgekit.cli import main

    for name in main.commands:
        loaded = _modules_after([name, "--help"])
        heavy = {m.split(".")[0] for m in loaded if m.split(".")[0] in HEAVY}
        assert not heavy, f"'edgekit {name} --help' imported {sorted(heavy)}"
