"""Opening a report in headless Chromium: the page as rendered (sections, loaded images) and a screenshot."""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from psyattr.studies.report import SECTIONS, find_chromium

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
         "--virtual-time-budget=10000"]


def _chromium(args: list[str], timeout: float) -> str:
    executable = find_chromium()
    if executable is None:
        raise FileNotFoundError("Chromium is not installed (Debian: apt-get install chromium)")
    with tempfile.TemporaryDirectory() as profile:
        result = subprocess.run([executable, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True,
                                text=True, timeout=timeout, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"Chromium failed ({result.returncode}): {result.stderr[-1000:]}")
    return result.stdout


def check_report(report: str | os.PathLike, screenshot: str | os.PathLike, width: int = 1280,
                 height: int = 9000, timeout: float = 120.0) -> dict[str, Any]:
    """Render `report` as a reader's browser does; return the sections shown, image counts and screenshot facts."""
    url = Path(report).resolve().as_uri()
    dom = _chromium(["--dump-dom", url], timeout)
    present = [s for s, *_ in SECTIONS if re.search(rf'<section id="{s}">', dom)]
    missing = re.findall(r'data-missing="([a-z_0-9]+)"', dom)
    images = re.search(r'data-images="(\d+)"', dom)
    broken = re.search(r'data-broken-images="(\d+)"', dom)
    _chromium([f"--screenshot={Path(screenshot).resolve()}", f"--window-size={width},{height}", url], timeout)
    pixels = np.asarray(Image.open(screenshot).convert("L"), dtype=np.float32)
    # Rows that are not plain background: text, tables and figures drawn on the page.
    inked_rows = int(np.sum(pixels.std(axis=1) > 2.0))
    return {
        "sections": present,
        "missing_sections": missing,
        "shown_sections": [s for s in present if s not in missing],  # a missing study still has its section
        "images": int(images.group(1)) if images else 0,
        "broken_images": int(broken.group(1)) if broken else -1,
        "screenshot": str(screenshot),
        "screenshot_size": [int(pixels.shape[1]), int(pixels.shape[0])],
        "inked_rows": inked_rows,
    }
