"""The command line. The only place that prints, and that turns EdgekitError into exit codes.

Each command group lives in its own module (build.py, deploy.py, device.py); heavy libraries
(torch, onnxruntime, transformers, paramiko) are imported inside the command bodies only, so
``edgekit --help`` starts fast (tests/test_imports.py checks this).
"""
from __future__ import annotations

import logging
import os
import sys
import traceback
from typing import Any, Optional

import click

from .. import __version__
from ..errors import EdgekitError
from .debuglog import write_debug_log
from .render import clean

EXIT_UNEXPECTED = 70


MAX_LINE = 2000
"""An error line quoting a device's output is cut here: one line, not a screenful."""


def _line(text: object) -> str:
    line = clean(text, newlines=False)
    return line if len(line) <= MAX_LINE else line[:MAX_LINE] + f"... ({len(line) - MAX_LINE} more characters)"


class EdgekitGroup(click.Group):
    """Runs commands and maps failures: EdgekitError -> one line + its exit code; anything else ->
    one line pointing at the debug log (the traceback goes there, not to the terminal)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except EdgekitError as exc:
            # Messages and hints quote devices, bundles and files: cleaned, and kept to one line each.
            click.echo(f"error: {_line(exc.message)}", err=True)
            if exc.hint:
                click.echo(f"hint: {_line(exc.hint)}", err=True)
            ctx.exit(exc.exit_code)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except BrokenPipeError:  # `edgekit ... | head`: the reader left; not an error of ours
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            ctx.exit(0)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(130)
        except Exception as exc:  # the promise: never a bare traceback
            log_path = write_debug_log(traceback.format_exc())
            where = f"; details in {log_path}" if log_path else ""
            click.echo(f"error: unexpected {type(exc).__name__}: {_line(exc)}{where}", err=True)
            ctx.exit(EXIT_UNEXPECTED)


@click.group(cls=EdgekitGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgekit")
@click.option("-v", "--verbose", is_flag=True, help="Log debug detail to stderr.")
def main(verbose: bool) -> None:
    """edgekit: export, quantize, deploy and validate models on edge boards.

    \b
    Typical flow:
      edgekit build --target x86-avx512-vnni
      edgekit deploy --device local
      edgekit validate --device local
    """
    handler = logging.StreamHandler()
    handler.setFormatter(_CleanFormatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, handlers=[handler])
    # paramiko logs a traceback for every failed key exchange (a hung board printed 44 lines before
    # the table): its records go to the private debug log only, never to the terminal.
    from .debuglog import library_log_handler

    noisy = logging.getLogger("paramiko")
    for old in noisy.handlers:
        old.close()
    noisy.handlers[:] = [library_log_handler()]
    noisy.propagate = False
    noisy.setLevel(logging.DEBUG if verbose else logging.INFO)


class _CleanFormatter(logging.Formatter):
    """Log lines quote device output too (host names, fingerprints, runner messages)."""

    def format(self, record: logging.LogRecord) -> str:
        return clean(super().format(record))


def _register() -> None:
    from . import build, deploy, device  # noqa: F401  (each module adds its commands to ``main``)

    for mod in (build, deploy, device):
        mod.register(main)


_register()


def run() -> None:  # console-script entry point
    main(prog_name="edgekit")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run())
