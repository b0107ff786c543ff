"""What a run is built from (comp.train.build): the model defines its input normalisation, which the run
uses, the checkpoint carries and prediction reads back."""

from __future__ import annotations

import pytest
from helpers import trained_fixture

from comp.experiment import Experiment, load_config
from comp.experiment.model import _saved_inputs
from comp.train.build import build_run

SMALL = ["model.name=timm/test_efficientnet", "batch_size=4"]


def config(tiny, *extra: str):
    return load_config(None, tiny["overrides"] + SMALL + list(extra))


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    return trained_fixture(tmp_path_factory, "train_build")  # timm/test_resnet, one epoch


def test_the_model_defines_its_input_normalisation(tiny, trained):
    # timm's test_resnet was pretrained with mean = std = 0.5, the kit's ResNets with ImageNet's: each run
    # normalises with its model's own values, saves them in the checkpoint, and prediction reads them back.
    run = build_run(config(tiny, "model.name=timm/test_resnet"), 0, resume=False)
    assert run.norm == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert build_run(config(tiny, "model.name=resnet18", f"out_dir={tiny['out'] / 'r'}"), 0,
                     resume=False).norm == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    model = Experiment(config(tiny, "model.name=timm/test_resnet")).load_model(trained["fold"] / "best.pt")
    assert model.norm == run.norm
    older = {"model_name": "resnet18", "in_chans": 3, "config": {}}  # an older kit's fold, no input_norm: ImageNet's
    assert _saved_inputs(older)["input_norm"] == [[0.485, 0.456, 0.406], [0.229, 0.224, 0.225]]
