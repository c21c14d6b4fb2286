"""emodistill: multitask facial emotion recognition with honest uncertainty.

Deep ensembles and iterative self-distillation (Deng, Wu, Shi 2021) as a toolkit.
"""

__version__ = "0.1.0"
