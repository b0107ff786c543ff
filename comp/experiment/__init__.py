"""The experiment: one config (loaded and checked once, `load_config`) and the run folder it owns
(`Experiment`: the layout, its checkpoints, OOF files and CV score), the checkpoint file format
(checkpoint), the OOF file format (oof), and one fold's trained model with what it expects to see
(`FoldModel`, `Experiment.load_model`)."""

from comp.experiment.config import load_config, stage_configs, validate_config
from comp.experiment.layout import FILES, Experiment, RunFiles

__all__ = ["FILES", "Experiment", "RunFiles", "load_config", "stage_configs", "validate_config"]
