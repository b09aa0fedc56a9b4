"""`psyattr demo` end to end in a process of its own, as the README's first command runs it (fewer epochs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from psyattr.studies.report import SECTIONS, find_chromium


@pytest.mark.slow
def test_demo_produces_every_result_and_a_report(tmp_path, omi_dir, yale_dir):
    out = tmp_path / "demo"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PSYATTR_CACHE_DIR": str(tmp_path / "cache")}
    result = subprocess.run([sys.executable, "-m", "psyattr", "demo", "--data", str(omi_dir), "--out", str(out),
                             "--epochs", "3", "--occlusion-faces", "10", "--quality-faces", "2"],
                            env=env, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    printed = result.stdout
    assert "psyattr demo finished" in printed and str(out.resolve()) in printed
    table = (out / "grid" / "table1.md").read_text()
    for attribute in ("attractive", "happy", "confident (dominant)", "intelligent (smart)"):
        for base in ("age", "gender"):
            assert f"| {attribute} | {base} | dense |" in table
    assert "dominant' stands in" in table
    for study in ("heatmaps", "occlusion", "expressions", "comparison", "quality"):
        summary = json.loads((out / study / "summary.json").read_text())
        assert summary["figures"] and all((out / study / f["file"]).exists() for f in summary["figures"])
    assert list((out / "saved_models" / "psyattr_demo_age").iterdir())[0].name == "1"
    assert "served model:" in printed and "answered on 127.0.0.1:" in printed
    assert "happiness change mouth" in printed and "AOPC:" in printed
    html = (out / "report.html").read_text()
    assert all(f'<section id="{section}">' in html for section, *_ in SECTIONS)
    assert 'class="missing"' not in html
    if find_chromium() is not None:
        assert f"browser check: {len(SECTIONS)} of {len(SECTIONS)} sections rendered with their results" in printed
        assert ", 0 broken;" in printed
        assert (out / "report_screenshot.png").stat().st_size > 50_000
