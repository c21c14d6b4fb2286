"""EMENet models: MobileFaceNet + optional MarbleNet features, one GRU head per task.

`build_model(preset)` makes a model by name; `load_backbone_weights` is the separate step
that brings in a pretrained face backbone.
"""

from emodistill.models.emenet import (
    MODALITIES,
    PRESETS,
    EMENet,
    ModelConfig,
    TaskHead,
    build_model,
    count_macs,
    count_parameters,
    presets_table,
)
from emodistill.models.weights import load_backbone_weights

__all__ = [
    "MODALITIES",
    "PRESETS",
    "EMENet",
    "ModelConfig",
    "TaskHead",
    "build_model",
    "count_macs",
    "count_parameters",
    "load_backbone_weights",
    "presets_table",
]
