"""Quantization methods beyond onnxruntime's quantizer defaults (issue #14): cross-layer equalization,
NNCF post-training quantization (bias correction, SmoothQuant), layout variants. Each is a build
candidate (``candidates.method_candidates``) that must pass the metric and guards and win on timing."""
