"""The run folder (`folder`): every file in it, the configs stored there (`config`), generation
names, and the ensemble that predicts (`ensemble`).

The map of a run folder's files is in `folder`, the one place that spells its paths.
"""

from emodistill.run.config import EXTENDABLE, RunConfig, TrainConfig
from emodistill.run.ensemble import RUNTIMES, Ensemble, export_run
from emodistill.run.folder import Run, generation_name, load_run, open_run, parse_generation

__all__ = [
    "EXTENDABLE",
    "RUNTIMES",
    "Ensemble",
    "Run",
    "RunConfig",
    "TrainConfig",
    "export_run",
    "generation_name",
    "load_run",
    "open_run",
    "parse_generation",
]
