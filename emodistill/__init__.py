"""emodistill: multitask facial emotion recognition with honest uncertainty.

Deep ensembles and iterative self-distillation (Deng, Wu, Shi 2021) as a toolkit. The Python API
is what the commands use:

    from emodistill import Predictor, load_run, prepare
    table = Predictor("runs/abaw6").predict("interview.mp4")   # one row per frame, with uncertainty

Each name is imported when first used, so `import emodistill` stays light, and `Predictor` loads
neither the training code nor the data-set readers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"
__all__ = ["Predictor", "__version__", "load_run", "prepare"]

if TYPE_CHECKING:
    from emodistill.data.prepare import prepare
    from emodistill.predict.predictor import Predictor
    from emodistill.run import load_run

# name -> the module that defines it
_LAZY = {"Predictor": "emodistill.predict.predictor", "prepare": "emodistill.data.prepare",
         "load_run": "emodistill.run"}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'emodistill' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
