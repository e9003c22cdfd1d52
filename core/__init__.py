"""stepadapt engine: diffusion, UNet, data, schedule, training, pruning, proxy, store, jobs, evaluation."""

__version__ = "0.1.0"
