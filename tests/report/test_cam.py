"""Grad-CAM of MIL rows (comp.report.cam.instance_cams): equal to pytorch-grad-cam's own GradCAM on the row's
instances at the backbone's layer4, for the pooled prediction (the map of one instance moves with the other
instances of its row under attention), the weights of the same forward pass, and the heaviest instances."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from comp.models import create_mil_model, create_model
from comp.report.cam import instance_cams, top_instances


class _Row(nn.Module):
    """The reference's model: one row's (N, C, H, W) instances -> the MIL model's (1, K) logits."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x.unsqueeze(0))


@pytest.mark.parametrize("pool", ["attention", "mean", "gru"])
def test_instance_cams_are_pytorch_grad_cams_of_the_pooled_prediction(pool):
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    torch.manual_seed(0)
    model = create_mil_model("resnet18", 3, pool).eval()
    x = torch.randn(2, 5, 3, 64, 64)
    cams, weights = instance_cams(model, x, [0, 1], [1, 1])
    assert cams.shape == (2, 5, 64, 64) and weights.shape == (2, 5)
    ref = GradCAM(model=_Row(model).eval(), target_layers=[model.backbone.layer4])
    try:
        for b, t in enumerate([0, 1]):
            want = ref(input_tensor=x[b], targets=[ClassifierOutputTarget(t)])
            assert np.allclose(cams[b], want, atol=1e-5)
            with torch.no_grad():
                model(x[b:b + 1])
            assert np.allclose(weights[b], model.instance_weights[0].numpy(), atol=1e-6)
    finally:
        ref.activations_and_grads.release()
    assert cams.max() > 0 and np.allclose(weights.sum(1), 1, atol=1e-5)


def test_an_instance_map_depends_on_its_row_under_attention_and_signs_flip_the_target():
    torch.manual_seed(0)
    model = create_mil_model("resnet18", 1, "attention").eval()
    x = torch.randn(1, 4, 3, 64, 64)
    other = x.clone()
    other[0, 1:] = torch.randn(3, 3, 64, 64)  # the same first instance among other instances
    a, _ = instance_cams(model, x, [0])
    b, _ = instance_cams(model, other, [0])
    assert np.abs(a[0, 0] - b[0, 0]).max() > 1e-4  # random attention weights are near uniform: a small change
    neg, _ = instance_cams(model, x, [0], [-1])  # the negative class of a one-logit binary model
    assert not np.allclose(a, neg, atol=1e-3)


def test_top_instances_heaviest_first_ties_in_order_and_only_mil_models():
    assert top_instances(np.array([0.1, 0.4, 0.2, 0.3]), 3).tolist() == [1, 3, 2]
    assert top_instances(np.full(6, 1 / 6)).tolist() == [0, 1, 2, 3]  # uniform pools: the first, in order
    assert top_instances(np.array([0.5, 0.5]), 4).tolist() == [0, 1]
    with pytest.raises(ValueError, match="MilModel"):
        instance_cams(create_model("resnet18", 2), torch.randn(1, 2, 3, 32, 32), [0])
