"""The HTML report in a real browser: Debian's Chromium, headless.

For each width (a 420 px phone and a 1280 px desktop) the report is laid out by Chromium in an
iframe of exactly that width (a headless window is at least 500 px wide, an iframe is not); a
script added to a *copy* of the report (the report itself carries none) measures the page and
posts the figures to the wrapper, which ``--dump-dom`` prints:
- the page never scrolls sideways (document scrollWidth <= clientWidth) and no element outside a
  table's own scroll box sticks out;
- no one-line cell (device, target, release, numbers) wraps onto a second line;
- every plot image decoded;
- at desktop width the fleet table fits without scrolling.
Then a real screenshot at each width: a PNG of the requested size that is not blank.

Chromium comes from tools/test-prereqs (``make test`` installs it as root). Without it the test
skips on a workstation and fails in CI (env CI set).
"""
from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict

import pytest

from edgekit.report import build_report, load_events, load_runs
from edgekit.report.releases import record
from test_report import _estimate_power, _measured_power, _synthetic

WIDTHS = (420, 1280)
HEIGHT = 900

MEASURE = """<script>
addEventListener("load", () => {
  const d = document.documentElement, cw = d.clientWidth;
  const offenders = [], wrapped = [];
  for (const el of document.body.querySelectorAll("*")) {
    if (el.parentElement.closest(".scroll")) continue;  // a table scrolls inside its own box
    const r = el.getBoundingClientRect();
    if (r.right > cw + 0.5 || r.left < -0.5)
      offenders.push(el.tagName + "." + el.className + " right=" + Math.round(r.right) + ": " + el.textContent.slice(0, 60));
  }
  for (const td of document.querySelectorAll("td:not(.wrap)")) {
    const range = document.createRange();
    range.selectNodeContents(td);
    const tops = new Set([...range.getClientRects()].filter(r => r.width > 0).map(r => Math.round(r.top)));
    if (tops.size > 1) wrapped.push(td.textContent.slice(0, 60));
  }
  const scrolling = [...document.querySelectorAll(".scroll")].filter(s => s.scrollWidth > s.clientWidth + 1)
    .map(s => s.previousElementSibling ? s.previousElementSibling.textContent : "?");
  const images = [...document.images];
  parent.postMessage({iw: innerWidth, cw: cw, sw: d.scrollWidth, offenders: offenders, wrapped: wrapped,
                      scrolling: scrolling, images: images.length,
                      decoded: images.filter(i => i.complete && i.naturalWidth > 0).length}, "*");
});
</script>"""

WRAPPER = """<!doctype html><html><head><meta charset="utf-8"></head><body style="margin:0">
<iframe src="{page}" style="border:0;width:{width}px;height:{height}px"></iframe>
<script>addEventListener("message", e => document.body.setAttribute("data-m", JSON.stringify(e.data)));</script>
</body></html>"""


def chromium() -> str:
    named = os.environ.get("EDGEKIT_TEST_CHROMIUM")
    found = shutil.which(named) if named else next(
        (p for p in (shutil.which(n) for n in ("chromium", "chromium-browser")) if p), None)
    if not found:
        message = "Chromium is not installed: run tools/test-prereqs as root, or: sudo apt-get install -y chromium"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


def _browser(args: list, profile: Path) -> subprocess.CompletedProcess:
    # Root needs --no-sandbox; each run its own profile, so parallel tests never share a lock.
    argv = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
            f"--user-data-dir={profile}", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fleet report with every section: a rolled-back canary, a failing board, a board not yet
    validated, measured and estimated power, guards, a long board name and a long error."""
    root = tmp_path_factory.mktemp("browser")
    runs = root / "runs"
    runs.mkdir()
    a, b = "a1b2c3d4e5f60718", "ffee001122334455"

    def at(day: int, minute: int = 0) -> datetime:
        return datetime(2025, 1, day, 0, minute, tzinfo=timezone.utc)

    def write(device: str, day: int, minute: int, **over: Any) -> None:
        stamp = at(day, minute).strftime("%Y%m%dT%H%M%SZ")
        (runs / f"{stamp}-{device}.json").write_text(json.dumps(_synthetic(device, stamp, **{"release_id": a, **over})))

    for i, device in enumerate(("pi-a", "pi-b", "jetson-orin-nano-lab-3", "x86-ci")):
        record(runs, device, "deploy", "switched", a, a, when=at(1), target="raspberry-pi-5")
        power = _measured_power() if i % 2 == 0 else _estimate_power()
        write(device, 1, i + 1, target="x86-avx512-vnni" if device == "x86-ci" else "raspberry-pi-5",
              power=power, guard={"passed": True, "findings": []})
    record(runs, "pi-a", "deploy", "switched", b, b, when=at(2))
    write("pi-a", 2, 1, release_id=b, ok=False, metric={"name": "top1", "value": 0.61, "threshold": 0.95, "passed": False})
    record(runs, "pi-a", "rollback", "rolled back", b, a, when=at(2, 2))
    write("pi-b", 3, 0, ok=False, metric={}, latency={},
          error={"kind": "runtime", "message": "onnxruntime cannot be imported: " + "x" * 300})
    record(runs, "new-board-with-a-rather-long-inventory-name", "deploy", "switched", a, a, when=at(4),
           target="raspberry-pi-4")
    res = build_report(load_runs(runs_dir=runs), root / "out", events=load_events(runs_dir=runs))
    assert res.rolled_back == ["pi-a"] and res.failed == ["pi-b"] and len(res.plots) >= 5
    return res.html


def _measure(report: Path, width: int, work: Path) -> Dict[str, Any]:
    page = work / f"measure-{width}.html"
    page.write_text(report.read_text(encoding="utf-8").replace("</body></html>", MEASURE + "</body></html>"),
                    encoding="utf-8")
    wrapper = work / f"wrapper-{width}.html"
    wrapper.write_text(WRAPPER.format(page=page.name, width=width, height=HEIGHT), encoding="utf-8")
    out = _browser([f"--window-size={max(width, 500) + 40},{HEIGHT + 40}", "--virtual-time-budget=10000",
                    "--dump-dom", wrapper.as_uri()], work / f"profile-m{width}")
    found = re.search(r'data-m="([^"]*)"', out.stdout)
    assert found, f"the measuring script reported nothing (exit {out.returncode}): {out.stderr[-2000:]}"
    return json.loads(html.unescape(found.group(1)))


@pytest.mark.parametrize("width", WIDTHS)
def test_report_has_no_horizontal_overflow(report: Path, width: int, tmp_path: Path) -> None:
    m = _measure(report, width, tmp_path)
    assert m["iw"] == width  # laid out at the width under test
    assert m["sw"] <= m["cw"], f"the page scrolls sideways at {width} px: {m['sw']} > {m['cw']}; {m['offenders'][:5]}"
    assert m["offenders"] == []
    assert m["wrapped"] == [], f"one-line cells wrapped at {width} px"
    assert m["images"] >= 5 and m["decoded"] == m["images"]
    if width >= 1280:
        assert "Fleet (current release per device)" not in m["scrolling"], m["scrolling"]


@pytest.mark.parametrize("width", WIDTHS)
def test_report_screenshot(report: Path, width: int, tmp_path: Path) -> None:
    from PIL import Image

    shot = tmp_path / f"report-{width}.png"
    out = _browser([f"--window-size={width},{HEIGHT}", f"--screenshot={shot}", report.as_uri()], tmp_path / "profile")
    assert shot.is_file(), f"no screenshot (exit {out.returncode}): {out.stderr[-2000:]}"
    keep = os.environ.get("EDGEKIT_REPORT_SHOTS")  # a folder to keep the screenshots in, to look at them
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(keep) / shot.name)
    with Image.open(shot) as img:
        assert img.size == (width, HEIGHT)
        gray = img.convert("L")
        hist = gray.histogram()
        dark = sum(hist[:200]) / (width * HEIGHT)
        colors = len(img.convert("RGB").getcolors(maxcolors=1 << 20) or [])
        # the top of the report: headings, the counts line and the fleet table, on white
        assert 0.01 < dark < 0.6, f"{dark:.3f} of the pixels are dark: blank or unreadable"
        assert colors > 20
        # the left margin is white and text starts near it: the page is not shifted or cut
        left = gray.crop((0, 0, 6, HEIGHT)).getextrema()
        assert left[0] > 200
