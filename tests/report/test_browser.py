"""The report of a real (tiny) GRPO run, opened in headless Chromium over the DevTools protocol:
it loads with no console error or uncaught exception, fetches nothing but itself, every plot
has a rendered size and draws something, and the screenshot is a real image.

Chromium is required: this test FAILS when it is missing (CI must install it: `bash
scripts/setup.sh` as root runs `apt-get install chromium`). Set RLHFLAB_SKIP_BROWSER=1 to skip it
on a machine without one."""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

import pytest

from rlhflab.report.browser import INSTALL_HINT, find_chromium, render_page
from rlhflab.report.html import write_report

EVIL = "<script>alert(1)</script><img src=x onerror=alert(2)>"


pytestmark = pytest.mark.skipif(os.environ.get("RLHFLAB_SKIP_BROWSER") == "1", reason="RLHFLAB_SKIP_BROWSER=1")


def need_chromium() -> str:
    """The Chromium binary; a missing one FAILS the test (CI must have it), with how to install it."""
    binary = find_chromium()
    if binary is None:
        pytest.fail(f"the report's browser test needs Chromium, which was not found: {INSTALL_HINT}; "
                    "or set RLHFLAB_SKIP_BROWSER=1 to skip this test")
    return binary


def _png_size(png: bytes) -> tuple[int, int]:
    assert png[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", png[16:24])


def test_report_renders_in_headless_chromium(grpo_run, tmp_path):
    chromium = need_chromium()
    run_dir = Path(shutil.copytree(grpo_run, tmp_path / "run", ignore=shutil.ignore_patterns("final", "checkpoints")))
    with (run_dir / "samples.jsonl").open("a") as f:  # text from a model may hold HTML
        f.write(json.dumps({"step": 8, "prompt": "p", "completion": EVIL, "scores": {"reward": 1.0}}) + "\n")
    out = write_report([run_dir], tmp_path / "report.html")
    page = render_page(out, binary=chromium, extra_js={"scripts": "document.scripts.length",
                                                        "images": "document.images.length",
                                                        "evil_text": "document.body.innerText.includes('alert(1)')"})
    assert page.errors == []
    assert page.requests == [out.resolve().as_uri()]  # self-contained: nothing else fetched
    assert page.values == {"scripts": 0, "images": 0, "evil_text": True}
    plots = [s for s in page.svgs if s["section"] in ("plots", "time") and s["visible"]]
    assert len(plots) >= 8  # loss, loss terms, reward, KL, entropy, length, proxy/gold vs KL, ..., time
    for svg in plots:
        assert svg["width"] >= 300 and svg["height"] >= 150, svg
        assert svg["marks"] > 0, svg  # every drawn plot has a line, bar or point
    width, height = _png_size(page.png)
    assert width == 1280 and height == page.page_size[1] > 2000
    assert len(page.png) > 50_000
    (tmp_path / "report.png").write_bytes(page.png)


def test_comparison_page_renders(grpo_run, fake_run, tmp_path):
    chromium = need_chromium()
    other = fake_run(tmp_path / "other", steps=8, lr=0.01)
    out = write_report([grpo_run, other], tmp_path / "compare.html")
    page = render_page(out, binary=chromium, max_height=1500)
    assert page.errors == []
    assert _png_size(page.png) == (1280, 1500)
    assert all(s["width"] > 0 for s in page.svgs if s["section"] == "plots" and s["visible"])
