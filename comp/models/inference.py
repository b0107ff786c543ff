"""The one forward loop of the kit: a model over batches already on the device, in eval mode, under
autocast, with TTA views. Validation (comp.train) and test prediction (comp.predict) both call it, so a
fold's validation outputs and its test outputs are computed the same way."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch

from comp.data.augment import TTA_VIEWS


@torch.no_grad()
def forward_views(models: Sequence[torch.nn.Module], batches: Iterable[torch.Tensor],
                  views: Sequence[str] = ("identity",), amp_dtype: torch.dtype | None = None,
                  activation: Callable[[torch.Tensor], torch.Tensor] | Sequence[Callable] | None = None,
                  on_batch: Callable[[], None] | None = None, features: bool = False) -> list[torch.Tensor]:
    """Each model's output over every batch, averaged over the TTA views: one (N, C) float32 CPU tensor
    per model, rows in batch order.

    Args:
        models: the models (put in eval mode here); every batch goes through all of them, so images are
            decoded once for a whole fold ensemble.
        batches: (B, C, H, W) normalised inputs on the models' device, or (B, N, C, H, W) for a MIL model
            (comp.models.mil; the views flip every instance alike).
        views: names of `comp.data.augment.TTA_VIEWS`, each one forward pass.
        amp_dtype: autocast dtype, or None for full precision.
        activation: applied to each view's logits before the mean (e.g. softmax: mean of probabilities),
            one for all models or one per model (a regression head's own target mean and std); None
            averages the logits.
        on_batch: called after each batch (a progress bar's update).
        features: the pooled embeddings instead of the logits, (N, num_features) per model: timm's
            `forward_head(forward_features(x), pre_logits=True)`, which the kit's ResNets share
            (comp.models.resnet); `activation` is not applied to them.
    """
    for m in models:
        m.eval()
    acts = list(activation) if isinstance(activation, Sequence) else [activation] * len(models)
    outs: list[list[torch.Tensor]] = [[] for _ in models]
    device_type = None
    for x in batches:
        device_type = device_type or x.device.type
        for k, model in enumerate(models):
            acc = None
            for view in views:
                with torch.autocast(x.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    v = TTA_VIEWS[view](x)
                    logits = (model.forward_head(model.forward_features(v), pre_logits=True) if features
                              else model(v)).float()  # (B, C), or (B, num_features)
                out = logits if acts[k] is None or features else acts[k](logits)
                # a copy: a compiled model's output in CUDA graphs (reduce-overhead) is overwritten by its next call
                acc = out.clone() if acc is None else acc + out
            outs[k].append(acc / len(views))
        if on_batch is not None:
            on_batch()
    return [torch.cat(o).cpu() if o else torch.zeros(0) for o in outs]
