"""Scores of attribute regressors: MAE on [0, 1], on the paper's 1..9 scale and the native scale, Pearson r."""

from __future__ import annotations

import numpy as np

from psyattr.data.rated import PAPER_SCALE


def pearson_r(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation; NaN when either side is constant."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def regression_scores(true01: np.ndarray, predicted01: np.ndarray, train_mean01: float,
                      native_scale: tuple[float, float]) -> dict[str, float]:
    """MAE of predictions and of always predicting the training mean, on [0, 1], 1..9 and the native scale."""
    error = float(np.mean(np.abs(predicted01 - true01)))
    baseline = float(np.mean(np.abs(train_mean01 - true01)))
    paper_span = PAPER_SCALE[1] - PAPER_SCALE[0]
    native_span = native_scale[1] - native_scale[0]
    return {
        "mae": error,
        "mae_1_9": error * paper_span,
        "mae_native": error * native_span,
        "baseline_mae": baseline,
        "baseline_mae_1_9": baseline * paper_span,
        "baseline_mae_native": baseline * native_span,
        "pearson_r": pearson_r(true01, predicted01),
        "count": int(len(true01)),
    }
