"""Open an HTML file in headless Chromium over the Chrome DevTools Protocol, with only the standard
library: the browser reads commands from fd 3 and writes replies to fd 4 (`--remote-debugging-pipe`),
each message one JSON object ended by a NUL byte.

`render_page(path)` loads a page and returns what a check needs: the console errors and uncaught
exceptions, the rendered size of every `<svg>`, the network requests, and a PNG screenshot. The
report's browser test and `scripts/screenshot_report.py` use it.

Chromium comes from the system: Debian's `chromium` package (`apt-get install chromium`;
`scripts/setup.sh` installs it when it runs as root). Set `RLHFLAB_CHROMIUM` to use another binary.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlhflab.errors import UserError

INSTALL_HINT = ("install it with `sudo apt-get install chromium` (Debian/Ubuntu: `bash scripts/setup.sh` does it as "
                "root), or point RLHFLAB_CHROMIUM at a Chromium or Chrome binary")
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--no-default-browser-check",
         "--disable-extensions", "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio",
         "--remote-debugging-pipe")

# Measures every inline SVG chart of the page (rendered box, and whether it drew any line).
# Every <svg> of the page: its section (the nearest ancestor with an id), rendered box, whether it
# is visible (not in a closed <details>), and how many marks (lines, bars, points) it draws.
MEASURE_JS = """JSON.stringify(Array.from(document.querySelectorAll('svg')).map(s => {
  const r = s.getBoundingClientRect();
  const sec = s.parentElement ? s.parentElement.closest('[id]') : null;
  return {section: sec ? sec.id : '', width: r.width, height: r.height,
          marks: s.querySelectorAll('polyline, rect.bar, circle').length,
          visible: s.checkVisibility ? s.checkVisibility() : true};
}))"""


class BrowserError(RuntimeError):
    """The browser could not be started or did not answer as the protocol says."""


def find_chromium() -> str | None:
    """The Chromium binary: $RLHFLAB_CHROMIUM, else chromium / chromium-browser / google-chrome on PATH."""
    env = os.environ.get("RLHFLAB_CHROMIUM")
    if env:
        return env if Path(env).is_file() else shutil.which(env)
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


@dataclass
class PageResult:
    """What `render_page` saw: problems are console errors, uncaught exceptions and error log entries."""

    errors: list[str] = field(default_factory=list)
    svgs: list[dict[str, Any]] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    png: bytes = b""
    page_size: tuple[int, int] = (0, 0)
    values: dict[str, Any] = field(default_factory=dict)
    """The values of `extra_js` expressions, by name."""


class CDPPipe:
    """A Chromium process and its DevTools pipe. Use as a context manager; `call` sends one command
    and waits for its reply, keeping the events that arrive meanwhile in `events`."""

    def __init__(self, binary: str | None = None, timeout: float = 60.0):
        self.binary = binary or find_chromium()
        if not self.binary:
            raise UserError(f"Chromium was not found; {INSTALL_HINT}")
        self.timeout = timeout
        self.events: list[dict[str, Any]] = []
        self._next_id = 0
        self._buffer = b""
        self._profile = tempfile.TemporaryDirectory(prefix="rlhflab-chromium-")
        self._log = tempfile.TemporaryFile()
        cmd_r, self._cmd_w = os.pipe()  # we write commands, the browser reads fd 3
        self._out_r, out_w = os.pipe()  # the browser writes replies on fd 4, we read

        def child_fds() -> None:  # runs in the child before exec: put the pipe ends on fds 3 and 4
            a = fcntl.fcntl(cmd_r, fcntl.F_DUPFD, 10)
            b = fcntl.fcntl(out_w, fcntl.F_DUPFD, 10)
            os.dup2(a, 3)
            os.dup2(b, 4)
            os.close(a)
            os.close(b)

        args = [self.binary, *FLAGS, f"--user-data-dir={self._profile.name}", "about:blank"]
        try:
            self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log,
                                         preexec_fn=child_fds, close_fds=False)
        except OSError as e:
            self._cleanup_fds(cmd_r, out_w)
            raise BrowserError(f"could not start {self.binary}: {e}") from None
        self._cleanup_fds(cmd_r, out_w)

    @staticmethod
    def _cleanup_fds(*fds: int) -> None:
        for fd in fds:
            os.close(fd)

    def __enter__(self) -> "CDPPipe":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def browser_log(self) -> str:
        self._log.seek(0)
        return self._log.read().decode("utf-8", "replace")[-3000:]

    # ------------------------------------------------------------------ messages
    def send(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> int:
        self._next_id += 1
        msg: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        data = json.dumps(msg).encode() + b"\0"
        try:
            while data:
                data = data[os.write(self._cmd_w, data):]
        except BrokenPipeError:
            raise BrowserError(f"the browser closed its pipe (sending {method}); its log:\n"
                               f"{self.browser_log()}") from None
        return self._next_id

    def _read_message(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrowserError(f"no answer from the browser within {self.timeout:.0f} s; its log:\n"
                                   f"{self.browser_log()}")
            ready, _, _ = select.select([self._out_r], [], [], min(left, 1.0))
            if not ready:
                if self.proc.poll() is not None:
                    raise BrowserError(f"the browser exited (code {self.proc.returncode}); its log:\n"
                                       f"{self.browser_log()}")
                continue
            chunk = os.read(self._out_r, 1 << 20)
            if not chunk:
                raise BrowserError(f"the browser closed its pipe; its log:\n{self.browser_log()}")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def call(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> dict[str, Any]:
        """Send a command and return its `result`; events that arrive first go to `events`."""
        want = self.send(method, params, session)
        deadline = time.monotonic() + self.timeout
        while True:
            msg = self._read_message(deadline)
            if msg.get("id") == want:
                if "error" in msg:
                    raise BrowserError(f"{method} failed: {msg['error']}")
                return msg.get("result", {})
            if "method" in msg:
                self.events.append(msg)

    def wait_event(self, method: str, session: str | None = None) -> dict[str, Any]:
        """The first event named `method` (already received or the next to come)."""
        deadline = time.monotonic() + self.timeout
        while True:
            for i, ev in enumerate(self.events):
                if ev.get("method") == method and (session is None or ev.get("sessionId") == session):
                    return self.events.pop(i)
            msg = self._read_message(deadline)
            if "method" in msg:
                self.events.append(msg)

    def close(self) -> None:
        if getattr(self, "proc", None) is not None and self.proc.poll() is None:
            try:
                self.send("Browser.close")
                self.proc.wait(timeout=10)
            except (BrowserError, subprocess.TimeoutExpired, OSError):
                self.proc.kill()
                self.proc.wait()
        for fd in (self._cmd_w, self._out_r):
            try:
                os.close(fd)
            except OSError:
                pass
        self._log.close()
        self._profile.cleanup()


def _problems(events: list[dict[str, Any]]) -> list[str]:
    """Console errors, uncaught exceptions and error-level log entries among CDP events."""
    out = []
    for ev in events:
        method, p = ev.get("method"), ev.get("params", {})
        if method == "Runtime.exceptionThrown":
            d = p.get("exceptionDetails", {})
            out.append(f"uncaught exception: {d.get('exception', {}).get('description') or d.get('text')}")
        elif method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            args = " ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", []))
            out.append(f"console.{p.get('type')}: {args}")
        elif method == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            e = p["entry"]
            out.append(f"log ({e.get('source')}): {e.get('text')} {e.get('url', '')}".strip())
    return out


def render_page(path: str | os.PathLike, width: int = 1280, height: int = 900, max_height: int | None = None,
                binary: str | None = None, timeout: float = 60.0,
                extra_js: dict[str, str] | None = None) -> PageResult:
    """Load the local file `path` in headless Chromium and screenshot the whole page (at most
    `max_height` CSS pixels of it when given). Returns errors, SVG sizes, requests, the PNG and
    the values of the `extra_js` expressions (name -> JavaScript expression)."""
    url = Path(path).resolve().as_uri()
    with CDPPipe(binary, timeout) as cdp:
        target = cdp.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = cdp.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Runtime", "Log", "Page", "Network"):
            cdp.call(f"{domain}.enable", session=session)
        cdp.call("Emulation.setDeviceMetricsOverride",
                 {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}, session)
        cdp.events.clear()
        nav = cdp.call("Page.navigate", {"url": url}, session)
        if nav.get("errorText"):
            raise BrowserError(f"could not open {url}: {nav['errorText']}")
        cdp.wait_event("Page.loadEventFired", session)
        value = cdp.call("Runtime.evaluate", {"expression": MEASURE_JS, "returnByValue": True}, session)
        svgs = json.loads(value["result"]["value"])
        values = {name: cdp.call("Runtime.evaluate", {"expression": js, "returnByValue": True}, session)["result"]
                  .get("value") for name, js in (extra_js or {}).items()}
        size = cdp.call("Page.getLayoutMetrics", session=session)["cssContentSize"]
        full_w, full_h = int(size["width"]), int(size["height"])
        shot_h = min(full_h, max_height) if max_height else full_h
        shot = cdp.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True,
                                                   "clip": {"x": 0, "y": 0, "width": full_w, "height": shot_h,
                                                            "scale": 1}}, session)
        cdp.call("Runtime.evaluate", {"expression": "1"}, session)  # flush late console events
        events = cdp.events
    requests = [e["params"]["request"]["url"] for e in events if e.get("method") == "Network.requestWillBeSent"]
    return PageResult(_problems(events), svgs, requests, base64.b64decode(shot["data"]), (full_w, full_h), values)
