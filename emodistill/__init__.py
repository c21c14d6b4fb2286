"""emodistill: multitask facial emotion recognition with honest uncertainty.

Deep ensembles and iterative self-distillation (Deng, Wu, Shi 2021) as a toolkit.
"""

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    # `emodistill.Predictor` without importing PyTorch and OpenCV for every `import emodistill`.
    if name == "Predictor":
        from emodistill.predict.predictor import Predictor

        return Predictor
    raise AttributeError(f"module 'emodistill' has no attribute {name!r}")
