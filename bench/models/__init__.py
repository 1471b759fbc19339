"""Benchmark models: the digits CNN, MiniLM-L6 (real weights) and a MobileNetV2-shaped CNN."""
