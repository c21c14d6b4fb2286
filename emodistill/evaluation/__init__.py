"""How members are judged: metrics, uncertainty, the baselines, and the evaluation of a run."""
