"""edgekit's device side: a standard-library + numpy package (Python >= 3.8) that ships, as
``edgekit/device/``, in every release, and that the host imports under the same names.

    runner.py      the validate command: orchestration, the result JSON, the CLI
    __main__.py    the entry point (copied to the release's root as runner.py)
    metrics/       the metric registry, one module per metric
    sensors/       the power sensor registry, one module per sensor family
    power.py       opening a sampler and measure(): energy per inference, carbon
    energy.py      energy from samples (pure)
    timing.py      the timed window and latency statistics
    reference.py   the release's manifest and reference.npz
    sessions.py    onnxruntime / LiteRT sessions and execution providers
    facts.py       device facts and emulation
    guard.py       the output guards and the task metrics' arithmetic
    plugins.py     a project's own metric and sensor files
    bounded.py     the output-bounding wrapper validate sends with each command
    release.py     the release logic deploy runs on the device (lock, verify, switch, prune, status)
    probes.py      doctor's pure probe parsers (host side; device-safe)
    errors.py      RunnerError
"""
