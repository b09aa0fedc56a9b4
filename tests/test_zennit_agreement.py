"""psyattr's LRP against zennit (chr5tphr/zennit, PyTorch) on real faces, through scripts/compare_zennit.py.

Needs a Python with torch and zennit named by $PSYATTR_ZENNIT_PYTHON (the venv line is in the script's
docstring) and the faces under $PSYATTR_DATA_DIR; skipped otherwise. zennit runs the same net twice, in
float32 and float64: the float64 run is the reference, and psyattr may miss it by what zennit's own float32
run misses it by (x3), or 1e-5 of the heatmap's largest value, whichever is larger. Images with tied
max-pooling windows are left out (psyattr shares a tied window's relevance, zennit picks one winner).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from psyattr.lrp import LRPExplainer

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "compare_zennit.py"
_spec = importlib.util.spec_from_file_location("compare_zennit", SCRIPT)
compare = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(compare)

FLOOR = 1e-5


@pytest.fixture(scope="module")
def zennit_python() -> str:
    python = os.environ.get(compare.ZENNIT_PYTHON_ENV)
    if not python:
        pytest.skip(f"${compare.ZENNIT_PYTHON_ENV} is not set to a Python with torch and zennit "
                    f"(see {SCRIPT.name} for the venv)")
    check = "import importlib.util, sys, torch; sys.exit(importlib.util.find_spec('zennit') is None)"
    found = subprocess.run([python, "-c", check], capture_output=True, text=True)
    if found.returncode != 0:
        reason = (found.stderr.strip().splitlines() or ["zennit not found"])[-1]
        pytest.skip(f"${compare.ZENNIT_PYTHON_ENV}={python} cannot import torch and zennit: {reason}")
    return python


@pytest.fixture(scope="module", params=compare.NETS)
def reference(request, zennit_python, face_images, tmp_path_factory):
    """(net name, model, images, targets, worker): two OMI and two UTKFace faces, each explained at its top class."""
    model = compare.build_net(request.param)
    images = face_images[[0, 1, 5, 6]]
    targets = np.argmax(LRPExplainer(model, "gradient").scores(images), axis=1).astype(np.int32)
    folder = tmp_path_factory.mktemp("zennit")
    with compare.ZennitWorker(zennit_python, model, {"faces": images}, targets, folder) as worker:
        yield request.param, model, images, targets, worker


def test_forward_logits_agree(reference):
    _, model, images, _, worker = reference
    ours = LRPExplainer(model, "gradient").scores(images)
    assert np.abs(ours - worker.logits("faces")).max() <= 1e-5 * np.abs(ours).max()


@pytest.mark.parametrize("composite", ["alpha2beta1", "epsilon"])
def test_tie_free_heatmaps_agree(reference, composite):
    _, model, images, targets, worker = reference
    free = compare.pool_ties(model, images) == 0
    assert free.sum() >= 2, "the test faces should mostly be free of tied pooling windows"
    found = compare.agreement(model, worker, composite, "faces", images, targets)
    report = {key: np.array2string(values[free], precision=2) for key, values in found.items()}
    assert compare.within_float32_noise(found, FLOOR)[free].all(), report
    assert found["correlation"][free].min() > 0.9999, report
