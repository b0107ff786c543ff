"""Training one fold: `fit(cfg, fold)` (loop), its optimizer and learning-rate schedule (optim), the
checkpoint file and the run state it holds (checkpoint, state), DDP (distributed), out-of-fold files (oof)."""

from comp.train.loop import Pruned, Stopped, fit

__all__ = ["Pruned", "Stopped", "fit"]
