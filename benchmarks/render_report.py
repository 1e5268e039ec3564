"""Render an esr-eval report.html in headless Chromium and save a PNG screenshot.

Contract
- ``render_html(html_path, png_path, window_px=(1400, 2000)) -> Path`` runs Chromium headless
  (no network, no GPU, a throw-away profile) on ``file://html_path`` and writes the screenshot of
  the top ``window_px`` (width, height in CSS pixels) of the page.
- Command line: ``python benchmarks/render_report.py [--run RUN_DIR] [--rules NAME|PATH]
  [--out PNG] [--height PX]``. Without ``--run`` it writes a synthetic 43-submission run
  (``tests.support.synthetic``) into a temporary folder first. The report goes where
  ``esr-eval report`` writes it (``esr_eval.report.report_dir``: ``<run>/report/``, or
  ``<run>/report-<rules>/`` for rules other than those of the run's ``rankings/``); the screenshot
  to ``--out`` (default ``screenshot.png`` beside the report). ``docs/report-screenshot.png`` is this
  command's screenshot of the report of a default run (``esr-eval evaluate`` on the shipped zoo,
  then ``--run <run> --height 3000``).
Needs ``/usr/bin/chromium`` (Debian: ``apt-get install -y chromium``); fails with that hint otherwise.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from esr_eval.cli import ranking_protocol  # noqa: E402
from esr_eval.report import write_report  # noqa: E402
from tests.support.synthetic import write_synthetic_run  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars",
)


def render_html(html_path: str | Path, png_path: str | Path, window_px: tuple[int, int] = (1400, 2000),
                timeout_s: float = 120.0) -> Path:
    """Screenshot ``html_path`` with headless Chromium into ``png_path``; returns ``png_path``."""
    if not CHROMIUM.exists():
        raise FileNotFoundError(f"{CHROMIUM} not found: install it (apt-get install -y chromium) to render reports")
    html_path, png_path = Path(html_path).resolve(), Path(png_path).resolve()
    png_path.parent.mkdir(parents=True, exist_ok=True)
    png_path.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="esr-chromium-") as profile:
        command = [str(CHROMIUM), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--screenshot={png_path}",
                   f"--window-size={window_px[0]},{window_px[1]}", html_path.as_uri()]
        completed = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    if not png_path.exists():
        raise RuntimeError(f"chromium wrote no screenshot (exit {completed.returncode}): {completed.stderr[-2000:]}")
    return png_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="run folder (default: a fresh synthetic 43-submission run)")
    parser.add_argument("--rules", default="auto",
                        help="ranking rules: name or YAML path (default auto: demo for the embedded split, else ntire2026)")
    parser.add_argument("--out", type=Path, help="screenshot path (default screenshot.png beside the report)")
    parser.add_argument("--height", type=int, default=2000, help="window height in px (default 2000)")
    args = parser.parse_args(argv)
    run_dir = args.run or write_synthetic_run(Path(tempfile.mkdtemp(prefix="esr-synthetic-")) / "synthetic-43")
    paths = write_report(run_dir, ranking_protocol(run_dir, args.rules))
    screenshot = render_html(paths.html, args.out or paths.html.parent / "screenshot.png", (1400, args.height))
    print(f"report: {paths.html}\nscreenshot: {screenshot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
