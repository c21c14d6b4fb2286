"""How members are made: losses, task balancing, training, backbone pretraining, distillation and its backends."""
