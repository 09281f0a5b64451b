"""Screenshot an rlhflab HTML report in headless Chromium (the docs' images):

    .venv/bin/python scripts/screenshot_report.py runs/quickstart/report.html docs/img/report_quickstart.png

Prints the page size, the plots measured and any console error; exits 1 when the page logged an
error or a plot rendered empty, 2 when Chromium or the file is missing. Uses
rlhflab.report.browser (the DevTools protocol over a pipe, standard library only).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("report", help="the report .html file")
    p.add_argument("out", help="the .png to write")
    p.add_argument("--width", type=int, default=1280, help="viewport width in CSS pixels (default 1280)")
    p.add_argument("--max-height", type=int, default=2000,
                   help="capture at most this many pixels from the top (0: the whole page; default 2000)")
    args = p.parse_args(argv)

    from rlhflab.errors import UserError
    from rlhflab.report.browser import render_page

    if not Path(args.report).is_file():
        print(f"error: report not found: {args.report}", file=sys.stderr)
        return 2
    try:
        page = render_page(args.report, width=args.width, max_height=args.max_height or None)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    Path(args.out).write_bytes(page.png)
    plots = [s for s in page.svgs if s["visible"]]
    empty = [s for s in plots if s["width"] == 0 or s["height"] == 0 or s["marks"] == 0]
    print(f"{args.out}: page {page.page_size[0]}x{page.page_size[1]} px, {len(plots)} visible plots "
          f"({len(empty)} empty), {len(page.png):,} bytes")
    for e in page.errors:
        print(f"page error: {e}", file=sys.stderr)
    return 1 if page.errors or empty else 0


if __name__ == "__main__":
    sys.exit(main())
