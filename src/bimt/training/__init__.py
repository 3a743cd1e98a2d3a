"""Training: the settings of a run, the one training loop, run directories, data parallelism."""
