"""LRP rules: how one linear layer (Conv2D or Dense) hands its output relevance to its input.

Every rule uses the gradient-times-input trick: for a linear map `f(a; W, b)`, the vector-Jacobian
product `vjp_W(s)` (the gradient of `<f(a; W, 0), s>` with respect to `a`) sums `w_ij s_j` over the
outputs, so `a * vjp_W(R / z)` is the matrix form `R_i = sum_j a_i w_ij / z_j R_j` without building
the matrix. Notation: `z` is the layer's pre-activation, `x+ = max(0, x)`, `x- = min(0, x)`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import tensorflow as tf

from psyattr.lrp.strided import window_padding

DEFAULT_STABILIZER = 1e-6


def stabilize(z: tf.Tensor, epsilon: float) -> tf.Tensor:
    """`z + epsilon * sign(z)` with sign(0) = +1, so a zero denominator never gives inf or NaN."""
    return z + epsilon * tf.where(z >= 0, tf.ones_like(z), -tf.ones_like(z))


@dataclasses.dataclass(frozen=True)
class LinearOp:
    """A Conv2D or Dense layer's linear part, callable with substitute weights; `input_nonnegative` is known from the graph."""

    apply: Callable[[tf.Tensor, tf.Tensor, tf.Tensor | None], tf.Tensor]
    kernel: tf.Tensor
    bias: tf.Tensor | None
    input_nonnegative: bool = False
    # The same map in a form whose transpose is cheaper; vjp differentiates it instead of `apply`.
    transposable: Callable[[tf.Tensor, tf.Tensor, tf.Tensor | None], tf.Tensor] | None = None

    def forward(self, a: tf.Tensor) -> tf.Tensor:
        """The layer's pre-activation with its own kernel and bias."""
        return self.apply(a, self.kernel, self.bias)

    def __call__(self, a: tf.Tensor, kernel: tf.Tensor | None = None) -> tf.Tensor:
        """The linear map without bias, with `kernel` (default: the layer's own)."""
        return self.apply(a, self.kernel if kernel is None else kernel, None)

    def vjp(self, a: tf.Tensor, upstream: tf.Tensor, kernel: tf.Tensor | None = None) -> tf.Tensor:
        """The gradient of `<f(a; kernel), upstream>` with respect to `a` (independent of `a`: f is linear)."""
        apply = self.transposable or self.apply
        with tf.GradientTape() as tape:
            tape.watch(a)
            out = apply(a, self.kernel if kernel is None else kernel, None)
        return tape.gradient(out, a, output_gradients=upstream)

    def bias_or_zero(self, like: tf.Tensor) -> tf.Tensor:
        """The bias, or a zero of the output's last dimension when the layer has none."""
        return self.bias if self.bias is not None else tf.zeros(tf.shape(like)[-1:], like.dtype)


class Rule:
    """Base class: a rule maps the relevance `r` of a linear layer's pre-activations `z` onto its input `a`."""

    def __call__(self, op: LinearOp, a: tf.Tensor, z: tf.Tensor, r: tf.Tensor) -> tf.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({params})"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and vars(self) == vars(other)

    def __hash__(self) -> int:
        return hash((type(self).__name__, tuple(sorted(vars(self).items()))))


def _check_nonnegative(name: str, value: float) -> float:
    value = float(value)
    if not value >= 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


class Epsilon(Rule):
    """LRP-epsilon: R_i = sum_j a_i w_ij / (z_j + epsilon sign(z_j)) R_j; epsilon 0 is LRP-0."""

    def __init__(self, epsilon: float = DEFAULT_STABILIZER):
        self.epsilon = _check_nonnegative("epsilon", epsilon)

    def __call__(self, op, a, z, r):
        return a * op.vjp(a, r / stabilize(z, self.epsilon))


class AlphaBeta(Rule):
    """LRP-alpha-beta in the modern form (alpha - beta = 1, beta >= 0): positive and negative parts weighted apart.

    R_i = sum_j (alpha (a+ w+ + a- w-)_ij / z+_j - beta (a+ w- + a- w+)_ij / z-_j) R_j, where z+ and z-
    sum the positive and the negative contributions, the bias parts included.
    """

    def __init__(self, alpha: float = 2.0, beta: float = 1.0, stabilizer: float = DEFAULT_STABILIZER):
        self.alpha, self.beta = float(alpha), float(beta)
        if abs(self.alpha - self.beta - 1.0) > 1e-9:
            raise ValueError(
                f"AlphaBeta needs alpha - beta = 1 (got alpha={alpha}, beta={beta}); for the paper's form with "
                "alpha + beta = 1 (e.g. alpha=2, beta=-1) use AlphaBeta.from_paper(alpha, beta)"
            )
        _check_nonnegative("beta", beta)
        self.stabilizer = _check_nonnegative("stabilizer", stabilizer)

    @classmethod
    def from_paper(cls, alpha: float, beta: float, stabilizer: float = DEFAULT_STABILIZER) -> AlphaBeta:
        """The rule as Bach et al. 2015 and Arbabzadah et al. 2016 write it: alpha + beta = 1, the beta term added.

        Their "alpha = 2, beta = -1" is the modern alpha = 2, beta = 1: the same numbers.
        """
        if abs(alpha + beta - 1.0) > 1e-9:
            raise ValueError(f"the paper's form needs alpha + beta = 1, got alpha={alpha}, beta={beta}")
        return cls(alpha, -beta, stabilizer)

    def __call__(self, op, a, z, r):
        w_pos, w_neg = tf.nn.relu(op.kernel), tf.minimum(op.kernel, 0.0)
        bias = op.bias_or_zero(z)
        if op.input_nonnegative:
            # After a ReLU a- = 0: z+ = a w+ + b+ and the negative part is what is left of z. This saves a
            # convolution per layer; on the shipped nets' ReLU outputs it matched the direct sum (compare_zennit).
            z_pos = op(a, w_pos) + tf.nn.relu(bias)
            s_pos = r / stabilize(z_pos, self.stabilizer)
            out = self.alpha * a * op.vjp(a, s_pos, w_pos)
            if self.beta:
                # Through w- itself: where z- is 0 (a patch of zeros), its share is huge and meets only zero terms.
                # Rewritten through w = w+ + w- it would have to cancel against w+ in rounding, and does not.
                s_neg = r / stabilize(z - z_pos, self.stabilizer)
                out -= self.beta * a * op.vjp(a, s_neg, w_neg)
            return out
        a_pos, a_neg = tf.nn.relu(a), tf.minimum(a, 0.0)
        z_pos = op(a_pos, w_pos) + op(a_neg, w_neg) + tf.nn.relu(bias)
        s_pos = r / stabilize(z_pos, self.stabilizer)
        out = self.alpha * (a_pos * op.vjp(a, s_pos, w_pos) + a_neg * op.vjp(a, s_pos, w_neg))
        if self.beta:
            # Summed directly, not as z - z+: on pixel-scale inputs z+ reaches thousands, and the difference
            # would lose z-'s digits to its rounding (2e-4 of the heatmap on the shipped nets, against 1e-6).
            z_neg = op(a_pos, w_neg) + op(a_neg, w_pos) + tf.minimum(bias, 0.0)
            s_neg = r / stabilize(z_neg, self.stabilizer)
            out -= self.beta * (a_pos * op.vjp(a, s_neg, w_neg) + a_neg * op.vjp(a, s_neg, w_pos))
        return out


class ZPlus(AlphaBeta):
    """LRP-z+ (alpha 1, beta 0): only positive contributions carry relevance."""

    def __init__(self, stabilizer: float = DEFAULT_STABILIZER):
        super().__init__(1.0, 0.0, stabilizer)

    def __repr__(self) -> str:
        return f"ZPlus(stabilizer={self.stabilizer!r})"


def _bound(value: float | Sequence[float]) -> tuple[float, ...]:
    return tuple(float(v) for v in value) if isinstance(value, Sequence) else (float(value),)


class ZBox(Rule):
    """LRP-z^B for the input layer, pixels bounded by low <= x <= high (scalars or one value per channel).

    R_i = sum_j (x_i w_ij - l_i w+_ij - h_i w-_ij) / sum_i (...) R_j. Bounds are in the space the layer sees;
    with `None`, the graph derives them from Caffe preprocessing: low = -mean, high = 255 - mean per channel.
    """

    def __init__(self, low: float | Sequence[float] | None = None, high: float | Sequence[float] | None = None,
                 stabilizer: float = DEFAULT_STABILIZER):
        if (low is None) != (high is None):
            raise ValueError("give both low and high, or neither (then they come from the model's preprocessing)")
        self.low = None if low is None else _bound(low)
        self.high = None if high is None else _bound(high)
        if self.low is not None:
            if len(self.low) != len(self.high):
                raise ValueError(f"low and high need the same length, got {len(self.low)} and {len(self.high)}")
            if any(lo >= hi for lo, hi in zip(self.low, self.high)):
                raise ValueError(f"each low bound must be below its high bound, got low={self.low}, high={self.high}")
        self.stabilizer = _check_nonnegative("stabilizer", stabilizer)

    def with_bounds(self, low: Sequence[float], high: Sequence[float]) -> ZBox:
        """This rule with bounds filled in (used when the graph derives them)."""
        return ZBox(low, high, self.stabilizer)

    def __call__(self, op, a, z, r):
        if self.low is None:
            raise ValueError("ZBox has no bounds: give low/high, or put it on a layer fed by CaffePreprocess")
        low = tf.broadcast_to(tf.constant(self.low, a.dtype), tf.shape(a))
        high = tf.broadcast_to(tf.constant(self.high, a.dtype), tf.shape(a))
        w_pos, w_neg = tf.nn.relu(op.kernel), tf.minimum(op.kernel, 0.0)
        bias = op.bias_or_zero(z)
        denominator = z - (op(low, w_pos) + tf.nn.relu(bias)) - (op(high, w_neg) + tf.minimum(bias, 0.0))
        s = r / stabilize(denominator, self.stabilizer)
        return a * op.vjp(a, s) - low * op.vjp(a, s, w_pos) - high * op.vjp(a, s, w_neg)


class _InputBlind(Rule):
    """Shares proportional to a function of the weights alone: the input's values are ignored."""

    def __init__(self, stabilizer: float = DEFAULT_STABILIZER):
        self.stabilizer = _check_nonnegative("stabilizer", stabilizer)

    def shares(self, kernel: tf.Tensor) -> tf.Tensor:
        raise NotImplementedError

    def __call__(self, op, a, z, r):
        shares = self.shares(op.kernel)
        s = r / stabilize(op(tf.ones_like(a), shares), self.stabilizer)
        return op.vjp(a, s, shares)


class Flat(_InputBlind):
    """LRP-flat: each input in a neuron's receptive field gets an equal share of its relevance."""

    def shares(self, kernel: tf.Tensor) -> tf.Tensor:
        return tf.ones_like(kernel)


class WSquare(_InputBlind):
    """LRP-w^2: shares proportional to w_ij^2 / sum_i w_ij^2, whatever the input."""

    def shares(self, kernel: tf.Tensor) -> tf.Tensor:
        return tf.square(kernel)


class Gamma(Rule):
    """LRP-gamma: positive weights boosted by `gamma`; positive and negative outputs handled apart (as zennit).

    For z_j > 0: R_i = sum_j (a+ (w + gamma w+) + a- (w + gamma w-))_ij / sum_i(...) R_j, and the mirror
    image for z_j < 0. For inputs a >= 0 and z > 0 this is R_i = a_i (w_ij + gamma w+_ij) / sum(...) R_j.
    """

    def __init__(self, gamma: float = 0.25, stabilizer: float = DEFAULT_STABILIZER):
        self.gamma = _check_nonnegative("gamma", gamma)
        self.stabilizer = _check_nonnegative("stabilizer", stabilizer)

    def __call__(self, op, a, z, r):
        w, b = op.kernel, op.bias_or_zero(z)
        w_up, w_down = w + self.gamma * tf.nn.relu(w), w + self.gamma * tf.minimum(w, 0.0)
        b_up, b_down = b + self.gamma * tf.nn.relu(b), b + self.gamma * tf.minimum(b, 0.0)
        r_pos = tf.where(z > 0, r, tf.zeros_like(r))
        r_neg = tf.where(z < 0, r, tf.zeros_like(r))
        if op.input_nonnegative:
            s_pos = r_pos / stabilize(op(a, w_up) + b_up, self.stabilizer)
            s_neg = r_neg / stabilize(op(a, w_down) + b_down, self.stabilizer)
            return a * (op.vjp(a, s_pos, w_up) + op.vjp(a, s_neg, w_down))
        a_pos, a_neg = tf.nn.relu(a), tf.minimum(a, 0.0)
        s_pos = r_pos / stabilize(op(a_pos, w_up) + op(a_neg, w_down) + b_up, self.stabilizer)
        s_neg = r_neg / stabilize(op(a_pos, w_down) + op(a_neg, w_up) + b_down, self.stabilizer)
        return (a_pos * (op.vjp(a, s_pos, w_up) + op.vjp(a, s_neg, w_down))
                + a_neg * (op.vjp(a, s_pos, w_down) + op.vjp(a, s_neg, w_up)))


class Pass(Rule):
    """Hand the relevance on unchanged (only for layers whose input and output have the same shape)."""

    def __call__(self, op, a, z, r):
        if a.shape.rank is not None and z.shape.rank is not None and a.shape[1:] != z.shape[1:]:
            raise ValueError(f"Pass needs equal input and output shapes, got {a.shape} and {z.shape}")
        return r


class Treatment:
    """Base class of what a layer without weights does with relevance: `treatment(layer, inputs, output, r)`.

    Returns one relevance tensor per input of the layer.
    """

    def __call__(self, layer, inputs: list[tf.Tensor], output: tf.Tensor, r: tf.Tensor) -> list[tf.Tensor]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other)

    def __hash__(self) -> int:
        return hash(type(self).__name__)


class Identity(Treatment):
    """Relevance passes unchanged, element by element (ReLU, dropout at inference, normalisations treated as identity)."""

    def __call__(self, layer, inputs, output, r):
        return [r]


class GradientFlow(Treatment):
    """Relevance follows the layer's gradient: reshapes, flattening, padding, cropping, shifts of the input."""

    def __call__(self, layer, inputs, output, r):
        with tf.GradientTape() as tape:
            tape.watch(inputs[0])
            out = layer(inputs[0], training=False)
        return [tape.gradient(out, inputs[0], output_gradients=r)]


class Norm(Treatment):
    """A sum (e.g. `Add`) hands each summand its share of the sum's relevance."""

    def __init__(self, stabilizer: float = DEFAULT_STABILIZER):
        self.stabilizer = _check_nonnegative("stabilizer", stabilizer)

    def __call__(self, layer, inputs, output, r):
        s = r / stabilize(output, self.stabilizer)
        return [a * s for a in inputs]


class WinnerTakesAll(Treatment):
    """Max-pooling: each window's relevance goes to its largest input, shared equally between tied winners.

    Sharing ties makes the result the same on every backend (XLA and TensorFlow's own kernels pick
    different winners among equal values, e.g. in saturated image regions).
    """

    def __call__(self, layer, inputs, output, r):
        return [max_pool_relevance(layer, inputs[0], r, output)]


def _scatter_windows(parts: dict[tuple[int, int], tf.Tensor], stride: tuple[int, int], pool: tuple[int, int],
                     size: tuple[int, int]) -> tf.Tensor:
    """Sum each window offset's tensor `parts[(dy, dx)]` `(N, out_h, out_w, C)` back onto the padded input grid.

    Offset d = stride * k + q lands in phase q of block i + k; one sum per phase and one interleave write
    the result once, where a transposed strided slice per offset would write the whole grid per offset.
    """
    (sh, sw), (ph, pw) = stride, pool
    out_h, out_w = next(iter(parts.values())).shape[1:3]
    blocks_h, blocks_w = out_h + (ph - 1) // sh, out_w + (pw - 1) // sw
    placed = {(dy, dx): tf.pad(part, [[0, 0], [dy // sh, blocks_h - out_h - dy // sh],
                                      [dx // sw, blocks_w - out_w - dx // sw], [0, 0]])
              for (dy, dx), part in parts.items()}
    rows = []
    for qy in range(sh):
        columns = []
        for qx in range(sw):
            terms = [t for (dy, dx), t in placed.items() if dy % sh == qy and dx % sw == qx]
            # A stride longer than the window leaves phases no window reaches.
            columns.append(tf.add_n(terms) if terms else tf.zeros_like(placed[0, 0]))
        rows.append(tf.stack(columns, axis=3))
    grid = tf.stack(rows, axis=2)  # (N, blocks_h, sh, blocks_w, sw, C)
    shape = tf.shape(grid)
    grid = tf.reshape(grid, [shape[0], blocks_h * sh, blocks_w * sw, shape[5]])
    height, width = size
    # Rows and columns no window reaches get no relevance.
    return tf.pad(grid, [[0, 0], [0, max(height - blocks_h * sh, 0)], [0, max(width - blocks_w * sw, 0)], [0, 0]]
                  )[:, :height, :width]


def max_pool_relevance(layer, a: tf.Tensor, r_out: tf.Tensor, pooled: tf.Tensor | None = None) -> tf.Tensor:
    """Winner-take-all relevance through a 2-D max-pooling layer (channels last), ties shared equally.

    `pooled` is the layer's own output when the caller has it (it saves recomputing each window's maximum).
    """
    (ph, pw), (sh, sw) = layer.pool_size, layer.strides
    height, width = a.shape[1], a.shape[2]
    out_h, top, bottom = window_padding(height, ph, sh, layer.padding)
    out_w, left, right = window_padding(width, pw, sw, layer.padding)
    padded = tf.pad(a, [[0, 0], [top, bottom], [left, right], [0, 0]], constant_values=tf.constant(a.dtype.min, a.dtype))
    views = {(dy, dx): padded[:, dy : dy + sh * (out_h - 1) + 1 : sh, dx : dx + sw * (out_w - 1) + 1 : sw, :]
             for dy in range(ph) for dx in range(pw)}
    winners = pooled if pooled is not None else tf.reduce_max(tf.stack(list(views.values())), axis=0)
    masks = {d: tf.cast(tf.equal(view, winners), a.dtype) for d, view in views.items()}
    share = r_out / tf.add_n(list(masks.values()))
    r_padded = _scatter_windows({d: mask * share for d, mask in masks.items()}, (sh, sw), (ph, pw),
                                (top + height + bottom, left + width + right))
    return r_padded[:, top : top + height, left : left + width, :]
