"""The Levi-Hassner base nets, their layers, groups, weights and the Caffe importer."""

from psyattr.models.groups import freeze, set_trainable_groups, trainable_groups, unfreeze
from psyattr.models.layers import CaffeLRN, CaffePreprocess
from psyattr.models.levi_hassner import AGE_GROUPS, CLASS_NAMES, GENDERS, build_base_model
from psyattr.models import lrp_adapters  # noqa: F401  (registers how LRP treats the nets' own layers)

__all__ = [
    "AGE_GROUPS", "CLASS_NAMES", "GENDERS", "CaffeLRN", "CaffePreprocess", "build_base_model", "freeze",
    "set_trainable_groups", "trainable_groups", "unfreeze",
]
