"""Ridge mode: a linear head on the frozen net's root-scaled pool5 features, solved in closed form.

Each attribute gets its own penalty, the one with the smallest exact leave-one-out error over the training
faces (no face outside them is looked at). The fit runs in the dual (faces x faces), so 9,216 pool5 features
of a few hundred faces cost a second. Each feature is centred and divided by its spread, but never by less
than the median feature's: most pool5 units are zero on nearly every face, and dividing by their tiny spread
makes any new face that does activate one an outlier (on OMI, plain standardising cost up to half the
cross-validated r; the floor beat no scaling at all by 0.01 on the mean of 10-fold CV r).
"""

from __future__ import annotations

import dataclasses

import numpy as np

# Searched per attribute; the leave-one-out optimum has sat well inside this range on OMI and UTKFace.
PENALTIES = tuple(float(v) for v in np.logspace(-3, 5, 33))
# Small enough to keep the root's compression of the tail (1.0 loses most of the gain), large enough that its
# gradient at zero stays finite (50).
ROOT_OFFSET = 1e-4


def root_features(features: np.ndarray, offset: float = ROOT_OFFSET) -> np.ndarray:
    """What the `RootFeatures` layer computes, in float64 numpy."""
    return np.sqrt(np.maximum(np.asarray(features, np.float64), 0.0) + offset) - np.sqrt(offset)


@dataclasses.dataclass
class RidgeFit:
    """A fitted linear head: `features @ kernel + bias`, and per target column the penalty and its LOO error."""

    kernel: np.ndarray  # (features, targets)
    bias: np.ndarray  # (targets,)
    penalties: list[float]
    loo_mse: list[float]

    def predict(self, features: np.ndarray) -> np.ndarray:
        """The head's scores of `features` `(N, D)`."""
        return np.asarray(features, np.float64) @ self.kernel + self.bias


def fit_ridge(features: np.ndarray, targets: np.ndarray, penalties: tuple[float, ...] = PENALTIES) -> RidgeFit:
    """Ridge regression of each target column on scaled `features`, its penalty chosen by leave-one-out error."""
    x = np.asarray(features, np.float64)
    y = np.asarray(targets, np.float64)
    if y.ndim == 1:
        y = y[:, None]
    if x.ndim != 2 or len(x) != len(y) or len(x) < 3:
        raise ValueError(f"ridge needs (N, D) features and N target rows with N >= 3, got {x.shape} and {y.shape}")
    if not np.all(np.isfinite(x)) or not np.all(np.isfinite(y)):
        raise ValueError("ridge features and targets must be finite")
    mean, spread = x.mean(axis=0), x.std(axis=0)
    scale = np.maximum(spread, float(np.median(spread)) or float(spread.max()) or 1.0)
    z = (x - mean) / scale
    width = z.shape[1]
    # The dual: K = Z Z^T / D has the same fitted values as the primal and is N x N instead of D x D.
    values, vectors = np.linalg.eigh(z @ z.T / width)
    values = np.maximum(values, 0.0)
    y_mean = y.mean(axis=0)
    projected = vectors.T @ (y - y_mean)
    kernel = np.empty((width, y.shape[1]))
    chosen, errors = [], []
    for k in range(y.shape[1]):
        best = (np.inf, penalties[0])
        for penalty in penalties:
            shrink = values / (values + penalty)
            fitted = vectors @ (shrink * projected[:, k])
            # The hat matrix is 11^T/n (the unpenalised intercept) plus the centred kernel's smoother; for penalised
            # least squares r_i / (1 - H_ii) is exactly the residual of the fit without face i.
            leverage = 1.0 / len(x) + np.einsum("ij,j,ij->i", vectors, shrink, vectors)
            loo = ((y[:, k] - y_mean[k]) - fitted) / (1.0 - leverage)
            best = min(best, (float(np.mean(loo ** 2)), penalty))
        alpha = vectors @ (projected[:, k] / (values + best[1]))
        kernel[:, k] = (z.T @ alpha) / width / scale
        chosen.append(best[1])
        errors.append(best[0])
    bias = y_mean - mean @ kernel
    return RidgeFit(kernel, bias, chosen, errors)
