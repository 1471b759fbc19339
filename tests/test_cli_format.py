"""Output formatting for people: power in sensible units, plain unpadded tables when piped, the
per-host live lines (hostile device text cleaned, hints kept)."""
from __future__ import annotations

from typing import Any

from click.testing import CliRunner

from edgekit.cli.device import format_watts
from edgekit.fleet_results import HostError, HostResult, Recap


def test_power_reads_in_sensible_units() -> None:
    assert format_watts(3.79e-05) == "37.9 uW"
    assert format_watts(0.0123) == "12.3 mW"
    assert format_watts(4.2) == "4.2 W"
    assert format_watts(0) == "0 W" and format_watts(None) == "n/a"


def test_tables_are_plain_and_unpadded_when_piped() -> None:
    import click

    from edgekit.cli.render import table

    @click.command()
    def show() -> None:
        table("title", ["device", "state"], [("a", "ok"), ("bb\x1b[2J", "x" * 10)])

    out = CliRunner().invoke(show).output
    assert out.splitlines() == ["title", "device  state", "a       ok", "bb      xxxxxxxxxx"]


def test_live_lines_clean_device_text_and_keep_hints() -> None:
    from edgekit.cli.fleet_output import LiveLines

    r = HostResult("pi-a", "deploy", "failed", False, seconds=1.25,
                   error=HostError("host_key_unknown", "unknown host key\x1b]0;pwn\x07 for 10.0.0.5",
                                   "ssh-keyscan -p 2222 10.0.0.5 >> ~/.ssh/known_hosts"))
    lines = [text for text, _ in LiveLines(["pi-a", "pi-b"]).lines(r)]
    assert lines[0].split() == ["pi-a", "failed", "1.2", "s"]
    assert lines[1].strip() == "error: unknown host key for 10.0.0.5"
    assert lines[2].strip() == "hint: ssh-keyscan -p 2222 10.0.0.5 >> ~/.ssh/known_hosts"


def test_recap_counts_like_play_recap() -> None:
    def h(outcome: str, ok: bool, action: str = "deploy") -> Any:
        return HostResult("x", action, outcome, ok)

    r = Recap.of([h("switched", True), h("repaired", True), h("unchanged", True), h("failed", False),
                  h("rolled back", False), h("not attempted", False), h("rolled back", True, "rollback")])
    assert r.line() == "ok=4 changed=3 unchanged=1 failed=1 rolled_back=2 not_attempted=1"
