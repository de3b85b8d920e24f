"""Screenshots of an evaluation report (the evaluate stage's HTML) in headless Chromium: does it render
in a real browser, pictures and photos included?

    .venv/bin/python scripts/report_screenshot.py work/evaluation_report.html --output report.png [--width 1280]

Chromium is not a project dependency (CI has none): `apt-get install -y chromium` on Debian. The page
is loaded from a file with the network off (the report must be self-contained: an external image or
style would not load), in a fresh profile that is removed afterwards. Prints the PNG's path and size,
and the number of images the page holds against the number the browser decoded (read from the DOM
once loaded; a broken data: URI decodes to width 0).
"""
from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import subprocess
import sys
import tempfile

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
# Every http(s) request goes to a proxy that is not there: a report that needs the network shows it.
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
         "--proxy-server=http://127.0.0.1:9", "--proxy-bypass-list=<-loopback>")
# Counts the page's images and those the browser decoded, into the document title, which --dump-dom prints.
_PROBE = """<script>window.addEventListener("load", () => {
  const images = [...document.images];
  document.title = JSON.stringify({images: images.length, decoded: images.filter(i => i.naturalWidth > 0).length});
});</script>"""


def browser() -> str:
    for name in BROWSERS:
        if shutil.which(name):
            return shutil.which(name)
    sys.exit(f"no Chromium found (tried {', '.join(BROWSERS)}): apt-get install -y chromium")


def run(args: list[str], profile: str) -> subprocess.CompletedProcess:
    return subprocess.run([browser(), *FLAGS, f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=120)


def screenshot(report: pathlib.Path, output: pathlib.Path, width: int, height: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="report-shot-") as work:
        probed = pathlib.Path(work) / "probed.html"
        probed.write_text(report.read_text(encoding="utf-8").replace("</body>", _PROBE + "</body>"), encoding="utf-8")
        dom = run(["--virtual-time-budget=5000", "--dump-dom", probed.as_uri()], str(pathlib.Path(work) / "a"))
        title = dom.stdout.split("<title>", 1)[-1].split("</title>", 1)[0].replace("&quot;", '"')
        counts = json.loads(title) if title.startswith("{") else {"images": None, "decoded": None}
        shot = run([f"--window-size={width},{height}", f"--screenshot={output.resolve()}", report.resolve().as_uri()],
                   str(pathlib.Path(work) / "b"))
        if not output.exists():
            sys.exit(f"Chromium wrote no screenshot: {shot.stderr[-2000:]}")
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=pathlib.Path)
    parser.add_argument("--output", type=pathlib.Path, default=pathlib.Path("report.png"))
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=6000, help="tall enough for the whole page")
    args = parser.parse_args()
    counts = screenshot(args.report, args.output, args.width, args.height)
    print(f"{args.output}: {args.output.stat().st_size} bytes; images in the page {counts['images']}, "
          f"decoded by the browser {counts['decoded']}")
    if counts["images"] != counts["decoded"]:
        sys.exit("some images did not decode")


if __name__ == "__main__":
    main()
