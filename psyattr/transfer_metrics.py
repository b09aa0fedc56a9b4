"""Scores of attribute regressors: MAE on [0, 1], 1..9 and the native scale, Pearson r, R^2, Spearman, with
bootstrap 95 % intervals over the test faces."""

from __future__ import annotations

import numpy as np

from psyattr.data.rated import PAPER_SCALE

RESAMPLES = 2000


def pearson_r(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation; NaN when either side is constant."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def _rows_pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(axis=-1, keepdims=True)
    b = b - b.mean(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (a * b).sum(-1) / np.sqrt((a * a).sum(-1) * (b * b).sum(-1))


def _rows_r2(true: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    total = ((true - true.mean(axis=-1, keepdims=True)) ** 2).sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return 1.0 - ((true - predicted) ** 2).sum(-1) / total


def _rows_spearman(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    return _rows_pearson(rankdata(a, axis=-1), rankdata(b, axis=-1))


def r_squared(true: np.ndarray, predicted: np.ndarray) -> float:
    """The share of the ratings' variance over faces that the predictions explain (1 - SSE/SST; can be negative)."""
    return float(_rows_r2(np.asarray(true, np.float64), np.asarray(predicted, np.float64)))


def spearman_r(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (ties share their mean rank); NaN when either side is constant."""
    return float(_rows_spearman(np.asarray(a, np.float64), np.asarray(b, np.float64)))


def bootstrap_intervals(true: np.ndarray, predicted: np.ndarray, resamples: int = RESAMPLES, seed: int = 0
                        ) -> dict[str, list[float]]:
    """95 % percentile intervals of MAE, Pearson r, R^2 and Spearman over `resamples` resamplings of the faces."""
    true, predicted = np.asarray(true, np.float64), np.asarray(predicted, np.float64)
    pick = np.random.default_rng(seed).integers(0, len(true), (resamples, len(true)))
    t, p = true[pick], predicted[pick]
    values = {"mae": np.abs(t - p).mean(-1), "pearson_r": _rows_pearson(t, p), "r2": _rows_r2(t, p),
              "spearman": _rows_spearman(t, p)}
    # A constant prediction (an untrained model) has no correlation in any resample: its interval is NaN too.
    return {name: [float(np.nanpercentile(v, 2.5)), float(np.nanpercentile(v, 97.5))] if np.isfinite(v).any()
            else [float("nan")] * 2 for name, v in values.items()}


def regression_scores(true01: np.ndarray, predicted01: np.ndarray, train_mean01: float,
                      native_scale: tuple[float, float], seed: int = 0) -> dict:
    """MAE of predictions and of always predicting the training mean (on [0, 1], 1..9 and the native scale),
    Pearson r, R^2 and Spearman, and `ci`: bootstrap 95 % intervals of each over the test faces."""
    true01, predicted01 = np.asarray(true01, np.float64), np.asarray(predicted01, np.float64)
    error = float(np.mean(np.abs(predicted01 - true01)))
    baseline = float(np.mean(np.abs(train_mean01 - true01)))
    paper_span = PAPER_SCALE[1] - PAPER_SCALE[0]
    native_span = native_scale[1] - native_scale[0]
    intervals = bootstrap_intervals(true01, predicted01, seed=seed) if len(true01) > 2 else {}
    ci = {}
    if intervals:
        ci = {"mae_1_9": [v * paper_span for v in intervals["mae"]],
              "mae_native": [v * native_span for v in intervals["mae"]],
              **{k: intervals[k] for k in ("pearson_r", "r2", "spearman")}}
    return {
        "mae": error,
        "mae_1_9": error * paper_span,
        "mae_native": error * native_span,
        "baseline_mae": baseline,
        "baseline_mae_1_9": baseline * paper_span,
        "baseline_mae_native": baseline * native_span,
        "pearson_r": pearson_r(true01, predicted01),
        "r2": r_squared(true01, predicted01) if len(true01) > 1 else float("nan"),
        "spearman": spearman_r(true01, predicted01) if len(true01) > 1 else float("nan"),
        "ci": ci,
        "count": int(len(true01)),
    }


def with_ceiling(scores: dict, ceiling: dict | None) -> dict:
    """`scores` with the raters' split-half r (`ceiling`) and r as a fraction of it (`r_fraction`, its interval)."""
    if not ceiling or not ceiling.get("r"):
        return scores
    fraction = scores["pearson_r"] / ceiling["r"]
    interval = [v / ceiling["r"] for v in scores.get("ci", {}).get("pearson_r", [])]
    return {**scores, "ceiling": ceiling, "r_fraction": fraction, "ci": {**scores.get("ci", {}), "r_fraction": interval}}
