"""Each LRP rule against a slow NumPy matrix-form reference, on small Dense and Conv2D layers."""

from __future__ import annotations

import itertools

import keras
import numpy as np
import pytest
import tensorflow as tf

from psyattr.lrp.graph import _linear_apply, _transposable_apply
from psyattr.lrp.rules import (AlphaBeta, Epsilon, Flat, Gamma, LinearOp, Pass, WSquare, ZBox, ZPlus,
                               max_pool_relevance)
from psyattr.lrp.strided import space_to_depth_conv

LOW, HIGH = -1.5, 2.0


def windows(height: int, width: int, kh: int, kw: int, stride: int, padding: str) -> tuple[int, int, int, int]:
    """(out_h, out_w, top, left) of a 2-D window sliding as Keras slides it, written out for the references."""
    if padding == "valid":
        return (height - kh) // stride + 1, (width - kw) // stride + 1, 0, 0
    out_h, out_w = -(-height // stride), -(-width // stride)
    return (out_h, out_w, max((out_h - 1) * stride + kh - height, 0) // 2,
            max((out_w - 1) * stride + kw - width, 0) // 2)


def conv_matrix(kernel: np.ndarray, height: int, width: int, stride: int, padding: str):
    """The dense (inputs, outputs) matrix of a 2-D convolution, and which entries are real connections."""
    kh, kw, channels, filters = kernel.shape
    out_h, out_w, top, left = windows(height, width, kh, kw, stride, padding)
    matrix = np.zeros((height * width * channels, out_h * out_w * filters))
    connected = np.zeros_like(matrix, dtype=bool)
    for oh, ow, f, i, j, c in itertools.product(range(out_h), range(out_w), range(filters), range(kh), range(kw),
                                                range(channels)):
        ih, iw = oh * stride + i - top, ow * stride + j - left
        if 0 <= ih < height and 0 <= iw < width:
            row, col = (ih * width + iw) * channels + c, (oh * out_w + ow) * filters + f
            matrix[row, col] = kernel[i, j, c, f]
            connected[row, col] = True
    return matrix, connected, (out_h, out_w, filters)


def stab(z, eps=1e-6):
    return z + eps * np.where(z >= 0, 1.0, -1.0)


def reference(rule, a, w, b, r, connected):
    """Matrix-form LRP: a (inputs,), w (inputs, outputs), b (outputs,), r (outputs,)."""
    contributions = a[:, None] * w
    z = contributions.sum(0) + b
    if isinstance(rule, Epsilon):
        return (contributions / stab(z, rule.epsilon) * r).sum(1)
    if isinstance(rule, AlphaBeta):
        pos, neg = np.maximum(contributions, 0), np.minimum(contributions, 0)
        z_pos, z_neg = pos.sum(0) + np.maximum(b, 0), neg.sum(0) + np.minimum(b, 0)
        return (rule.alpha * pos / stab(z_pos) * r - rule.beta * neg / stab(z_neg) * r).sum(1)
    if isinstance(rule, ZBox):
        low, high = np.full_like(a, rule.low[0]), np.full_like(a, rule.high[0])
        d = contributions - low[:, None] * np.maximum(w, 0) - high[:, None] * np.minimum(w, 0)
        return (d / stab(d.sum(0)) * r).sum(1)
    if isinstance(rule, Flat):
        share = connected.astype(float)
        return (share / stab(share.sum(0)) * r).sum(1)
    if isinstance(rule, WSquare):
        return (w**2 / stab((w**2).sum(0)) * r).sum(1)
    if isinstance(rule, Gamma):
        g = rule.gamma
        up = np.maximum(a, 0)[:, None] * (w + g * np.maximum(w, 0)) + np.minimum(a, 0)[:, None] * (w + g * np.minimum(w, 0))
        down = np.maximum(a, 0)[:, None] * (w + g * np.minimum(w, 0)) + np.minimum(a, 0)[:, None] * (w + g * np.maximum(w, 0))
        z_up, z_down = up.sum(0) + b + g * np.maximum(b, 0), down.sum(0) + b + g * np.minimum(b, 0)
        return (up / stab(z_up) * np.where(z > 0, r, 0) + down / stab(z_down) * np.where(z < 0, r, 0)).sum(1)
    raise AssertionError(rule)


RULES = [Epsilon(1e-6), Epsilon(0.5), AlphaBeta(2, 1), AlphaBeta(3, 2), ZPlus(), ZBox(LOW, HIGH), Flat(), WSquare(),
         Gamma(0.25), Gamma(1.0)]


def run_rule(rule, layer, a, r, nonnegative):
    op = LinearOp(_linear_apply(layer), layer.kernel.value, layer.bias.value, nonnegative, _transposable_apply(layer))
    a = tf.constant(a, tf.float32)
    z = op.forward(a)
    return rule(op, a, z, tf.constant(r, tf.float32)).numpy()


@pytest.mark.parametrize("rule", RULES, ids=repr)
@pytest.mark.parametrize("nonnegative", [False, True])
def test_dense_rule_matches_matrix_form(rule, nonnegative):
    rng = np.random.default_rng(0)
    layer = keras.layers.Dense(5)
    layer.build((None, 7))
    w, b = rng.normal(size=(7, 5)), rng.normal(size=5)
    layer.set_weights([w.astype("float32"), b.astype("float32")])
    a = rng.uniform(LOW, HIGH, size=7)
    if nonnegative:
        a = np.maximum(a, 0)
    r = rng.normal(size=5)
    got = run_rule(rule, layer, a[None], r[None], nonnegative)[0]
    want = reference(rule, a.astype("float32").astype(float), layer.get_weights()[0].astype(float),
                     layer.get_weights()[1].astype(float), r, np.ones((7, 5), bool))
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4 * np.abs(want).max())


@pytest.mark.parametrize("rule", RULES, ids=repr)
@pytest.mark.parametrize("stride, padding", [(1, "same"), (2, "valid"), (2, "same"), (4, "valid")])
@pytest.mark.parametrize("nonnegative", [False, True])
def test_conv_rule_matches_matrix_form(rule, stride, padding, nonnegative):
    rng = np.random.default_rng(1)
    layer = keras.layers.Conv2D(3, 3, strides=stride, padding=padding)
    layer.build((None, 6, 6, 2))
    kernel, bias = rng.normal(size=(3, 3, 2, 3)).astype("float32"), rng.normal(size=3).astype("float32")
    layer.set_weights([kernel, bias])
    a = rng.uniform(LOW, HIGH, size=(6, 6, 2)).astype("float32")
    if nonnegative:  # ReLU outputs: the rules' own path, where patches of zeros leave some z+ or z- at exactly 0
        a = np.maximum(a, 0)
    matrix, connected, out_shape = conv_matrix(kernel.astype(float), 6, 6, stride, padding)
    r = rng.normal(size=out_shape)
    got = run_rule(rule, layer, a[None], r[None], nonnegative)[0]
    want = reference(rule, a.ravel().astype(float), matrix, np.tile(bias.astype(float), out_shape[0] * out_shape[1]),
                     r.ravel(), connected).reshape(a.shape)
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4 * np.abs(want).max())


def test_alpha_beta_keeps_a_small_negative_part_exact_beside_a_large_positive_one():
    # Pixel-scale inputs of either sign (the first layer): z- taken as z - z+ would lose its digits to the
    # float32 rounding of z+ (here 999.999 against 1000), and with them the negative relevance.
    layer = keras.layers.Dense(1)
    layer.build((None, 2))
    layer.set_weights([np.array([[1.0], [-0.001]], "float32"), np.zeros(1, "float32")])
    a = np.array([[1000.0, 1.0]])
    got = run_rule(AlphaBeta(2, 1), layer, a, np.ones((1, 1)), nonnegative=False)[0]
    want = reference(AlphaBeta(2, 1), a[0], layer.get_weights()[0].astype(float), np.zeros(1), np.ones(1),
                     np.ones((2, 1), bool))
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_pass_hands_relevance_on_and_refuses_a_shape_change():
    layer = keras.layers.Dense(3)
    layer.build((None, 3))
    r = np.arange(3.0)[None]
    assert np.array_equal(run_rule(Pass(), layer, np.ones((1, 3)), r, False), r)
    layer4 = keras.layers.Dense(4)
    layer4.build((None, 3))
    with pytest.raises(ValueError, match="Pass needs equal input and output shapes"):
        run_rule(Pass(), layer4, np.ones((1, 3)), np.ones((1, 4)), False)


def test_rule_arguments_are_validated():
    with pytest.raises(ValueError, match=r"alpha - beta = 1 .* AlphaBeta.from_paper"):
        AlphaBeta(2, -1)
    with pytest.raises(ValueError, match="beta must be >= 0"):
        AlphaBeta(0, -1)
    with pytest.raises(ValueError, match="epsilon must be >= 0"):
        Epsilon(-0.1)
    with pytest.raises(ValueError, match="gamma must be >= 0"):
        Gamma(-1)
    with pytest.raises(ValueError, match="low bound must be below"):
        ZBox(1.0, 0.0)
    with pytest.raises(ValueError, match="both low and high"):
        ZBox(low=0.0)


def test_paper_form_maps_to_the_modern_rule():
    assert AlphaBeta.from_paper(2, -1) == AlphaBeta(2, 1)
    assert vars(AlphaBeta.from_paper(1, 0)) == vars(ZPlus())
    with pytest.raises(ValueError, match="alpha \\+ beta = 1"):
        AlphaBeta.from_paper(2, 1)


@pytest.mark.parametrize("size, kernel, stride, padding", [
    ((227, 227), 7, 4, "valid"), ((13, 11), 3, 2, "valid"), ((12, 12), 4, 2, "same"), ((9, 10), 5, 3, "same"),
    ((8, 8), 2, 2, "valid"), ((10, 7), 3, 4, "same")])
def test_a_strided_convolution_over_space_to_depth_blocks_equals_the_convolution(size, kernel, stride, padding):
    rng = np.random.default_rng(2)
    a = tf.constant(rng.normal(size=(2, *size, 3)), tf.float32)
    w = tf.constant(rng.normal(size=(kernel, kernel, 3, 5)), tf.float32)
    want = keras.ops.conv(a, w, strides=stride, padding=padding).numpy()
    got = space_to_depth_conv(a, w, stride, padding).numpy()
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def pool_reference(a, r, pool, stride, padding):
    """Winner-take-all by loops over windows: each window's relevance split equally between its maxima."""
    n, height, width, channels = a.shape
    out_h, out_w, top, left = windows(height, width, pool, pool, stride, padding)
    out = np.zeros_like(a)
    for b, i, j, c in itertools.product(range(n), range(out_h), range(out_w), range(channels)):
        rows = [y for y in range(i * stride - top, i * stride - top + pool) if 0 <= y < height]
        cols = [x for x in range(j * stride - left, j * stride - left + pool) if 0 <= x < width]
        window = a[b, rows][:, cols, c]
        winners = np.argwhere(window == window.max())
        for y, x in winners:
            out[b, rows[y], cols[x], c] += r[b, i, j, c] / len(winners)
    return out


@pytest.mark.parametrize("size, pool, stride, padding", [
    ((12, 12), 3, 2, "same"), ((13, 11), 3, 2, "valid"), ((8, 8), 2, 2, "valid"), ((9, 10), 3, 3, "same"),
    ((7, 7), 2, 1, "same"), ((11, 11), 4, 3, "same")])
def test_max_pool_relevance_goes_to_the_winners_of_each_window_ties_shared(size, pool, stride, padding):
    rng = np.random.default_rng(3)
    layer = keras.layers.MaxPooling2D(pool, stride, padding=padding)
    a = rng.integers(0, 3, size=(2, *size, 2)).astype("float32")  # few values: many ties
    pooled = layer(a)
    r = rng.uniform(size=pooled.shape).astype("float32")
    want = pool_reference(a, r, pool, stride, padding)
    for given in (pooled, None):
        got = max_pool_relevance(layer, tf.constant(a), tf.constant(r), given).numpy()
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
