"""SGD with a learning rate per layer group, so that fine-tuning moves pretrained features more gently than the head."""

from __future__ import annotations

import keras


@keras.saving.register_keras_serializable(package="psyattr")
class GroupSGD(keras.optimizers.SGD):
    """Keras's SGD, with each layer group's steps scaled: `group_scales={"features": 0.1}` moves conv1..conv3 at a
    tenth of the learning rate and fc6..the head at the full rate. Saved and resumed with the model."""

    def __init__(self, learning_rate=0.01, momentum=0.0, nesterov=False, group_scales: dict | None = None, **kwargs):
        # Imported here: this module is registered while Keras itself loads, which groups.py imports.
        from psyattr.models.groups import GROUPS

        super().__init__(learning_rate=learning_rate, momentum=momentum, nesterov=nesterov, **kwargs)
        self.group_scales = {str(k): float(v) for k, v in (group_scales or {}).items()}
        unknown = set(self.group_scales) - set(GROUPS)
        if unknown:
            raise ValueError(f"unknown layer group(s) {sorted(unknown)} in group_scales: expected some of "
                             f"{', '.join(GROUPS)}")

    def _scale_of(self, variable) -> float:
        from psyattr.models.groups import layer_group

        # The TensorFlow backend hands update_step the raw tf.Variable; the Keras variable at the same index
        # knows its path (layer/weight).
        path = self._trainable_variables[self._get_variable_index(variable)].path
        layer = path.split("/")[-2] if "/" in path else path
        return self.group_scales.get(layer_group(layer), 1.0)

    def update_step(self, gradient, variable, learning_rate):
        """One SGD step of `variable`, its learning rate scaled by its layer group's factor."""
        scale = self._scale_of(variable)
        if scale != 1.0:
            learning_rate = keras.ops.multiply(keras.ops.cast(learning_rate, variable.dtype), scale)
        super().update_step(gradient, variable, learning_rate)

    def get_config(self) -> dict:
        """The SGD config and the group scales."""
        return {**super().get_config(), "group_scales": dict(self.group_scales)}
