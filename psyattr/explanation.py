"""`Explanation`: what every attribution method returns, in process or from a served model."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Explanation:
    """Per image: the explained output, its pre-activation score, the relevance, and the model's outputs.

    `relevance` is `(N, H, W, C)` per input value (LRP, gradients) or `(N, H, W)` per pixel (Grad-CAM, a served
    heatmap); `heatmap` is always `(N, H, W)`. `outputs` maps each output name to the model's own outputs
    `(N,)` (after its softmax or score clipping), from the same forward pass.
    """

    targets: np.ndarray
    target_names: list[str]
    scores: np.ndarray
    relevance: np.ndarray
    outputs: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    pre_activations: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

    @property
    def heatmap(self) -> np.ndarray:
        """Relevance per pixel `(N, H, W)`: summed over the colour channels where it has them."""
        relevance = np.asarray(self.relevance, np.float32)
        return relevance.sum(axis=-1) if relevance.ndim == 4 else relevance

    def __len__(self) -> int:
        return len(self.scores)

    def row(self, index: int) -> dict:
        """One image's numbers as plain values (for JSON records)."""
        return {
            "target": self.target_names[index],
            "target_index": int(self.targets[index]),
            "score": float(self.scores[index]),
            "relevance_sum": float(np.asarray(self.relevance[index], np.float64).sum()),
            "outputs": {name: float(values[index]) for name, values in self.outputs.items()},
            **({"pre_activations": {name: float(values[index]) for name, values in self.pre_activations.items()}}
               if self.pre_activations else {}),
        }


def from_signature(outputs: dict[str, np.ndarray], names: list[str] | None) -> Explanation:
    """An explanation from the outputs of an exported `explain` signature (`target`, `target_score`, `heatmap`, ...)."""
    outputs = dict(outputs)
    targets = [t.decode() if isinstance(t, bytes) else str(t) for t in outputs.pop("target")]
    scores, heatmap = outputs.pop("target_score"), outputs.pop("heatmap")
    indices = np.asarray([names.index(t) if names and t in names else -1 for t in targets])
    return Explanation(indices, targets, scores, heatmap, outputs)


__all__ = ["Explanation", "from_signature"]
