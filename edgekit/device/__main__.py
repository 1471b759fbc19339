"""The device-side entry point, shipped at a release's root as ``runner.py``.

    python3 <release>/runner.py validate --release <release> --out result.json ...

The release holds this package as ``edgekit/device/`` (with an ``edgekit/__init__.py`` of its own),
so the device imports the very modules the host imports, under the same names. On the host the
same code runs as ``python -m edgekit.device validate ...``.
"""
import os
import sys


def _release_package():
    """edgekit.device from the release beside this file; never an edgekit installed elsewhere on
    the device, whose runner would not be the one the release's manifest hashes."""
    here = os.path.dirname(os.path.abspath(__file__))
    # A release is immutable once switched: importing its package must not write __pycache__ into it.
    sys.dont_write_bytecode = True
    if sys.path[:1] != [here]:
        sys.path.insert(0, here)
    shipped = os.path.join(here, "edgekit", "device")
    try:
        import edgekit.device

        # A namespace package (the release lost its __init__.py files) has no __file__.
        found = getattr(edgekit.device, "__file__", None)
    except ImportError:
        found = None
    if not found or os.path.realpath(os.path.dirname(found)) != os.path.realpath(shipped):
        sys.stderr.write("runner: %s holds no edgekit/device package; deploy the release again\n" % here)
        sys.exit(4)
    from edgekit.device import runner

    return runner


if __name__ == "__main__":
    if __package__:  # python -m edgekit.device
        from . import runner as _runner
    else:
        _runner = _release_package()
    sys.exit(_runner.main())
