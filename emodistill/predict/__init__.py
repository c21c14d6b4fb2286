"""Per-frame emotion with uncertainty from videos, images and crops, on a trained run."""

from emodistill.predict.predictor import Predictor

__all__ = ["Predictor"]
