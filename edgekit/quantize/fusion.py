"""Transformer fusion for the CPU execution provider (onnxruntime.transformers.optimizer).

ORT's session optimizer does not fuse attention; the Python fusion tool does: Attention (one QKV
GEMM), SkipLayerNormalization, BiasGelu, EmbedLayerNormalization. ``quantize_dynamic`` then turns
Attention into QAttention, which is onnxruntime's documented fast path for BERT-like encoders on
CPU ("transformer-based models: optimize with the transformer optimizer, then quantize dynamically").

The fused ops live in the ``com.microsoft`` domain: the CPU EP has them on x86 and ARM, TensorRT
does not, so GPU targets never get a fused model. A fusion is only kept when the fused model gives
the same outputs as the original (a wrong pattern match would silently change the function).
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from ..optimize import quiet
from .evaluate import make_session, output_error, run_outputs

FUSION_TOLERANCE = 1e-3
"""Max mean relative L2 difference between fused and original outputs (float reassociation only)."""


def fuse_transformer(base: Path, out: Path, feeds: Sequence[Dict[str, np.ndarray]], references: List[np.ndarray],
                     index: int, level: str, large: bool = False) -> Optional[Dict[str, int]]:
    """Write the fused model to ``out`` and return the fused-op counts, or None when nothing useful
    fused or the fused model disagrees with the original."""
    try:
        from onnxruntime.transformers.optimizer import optimize_model

        with quiet():
            # opt_level=0: Python fusions only; ORT's own (hardware-specific) passes run on the device.
            fused = optimize_model(str(base), model_type="bert", num_heads=0, hidden_size=0, opt_level=0,
                                   use_gpu=False)
            stats = {k: int(v) for k, v in fused.get_fused_operator_statistics().items() if v}
            if not stats.get("Attention") and not stats.get("SkipLayerNormalization"):
                return None
            fused.save_model_to_file(str(out), use_external_data_format=large)
    except Exception:  # the fusion tool is best-effort: an unknown architecture keeps the plain graph
        return None
    try:
        err = output_error(run_outputs(make_session(out, level), feeds, index), references)
    except Exception:
        err = float("inf")
    if not err <= FUSION_TOLERANCE:
        out.unlink(missing_ok=True)
        (out.parent / (out.name + ".data")).unlink(missing_ok=True)
        return None
    return stats
