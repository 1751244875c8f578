"""The one training loop of the library: any model, any ``torch.optim`` optimizer.

The forensic trainers (:mod:`assocmem.forensic.train`), the harness's runs
(``experiments/loop.py``) and the learned memory's held-out evaluation
(``experiments/meta_evaluate.py``) all step through :func:`fit`, so early stopping, divergence
handling, timing and logging mean the same thing everywhere.
"""

from assocmem.training.loop import (
    Logger,
    OptimizerFactory,
    TrainResult,
    fit,
    trainable_parameters,
)

__all__ = ["Logger", "OptimizerFactory", "TrainResult", "fit", "trainable_parameters"]
