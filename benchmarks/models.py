"""Training-step throughput of the kit's ResNets against timm's same architecture.

The two run interleaved, kit then timm, round after round, and each side reports its median round:
a slow spell of the machine (thermal throttling, a background job) then hits both sides alike instead of
whichever happened to run during it. That cancels drift, not oversubscription: with other processes
busy on the same cores, OpenMP's threads wait on each other for seconds at a time and single rounds
slow down 10-20x at random (measured on a 2-core runner), so benchmark on an otherwise idle machine.
"""

from __future__ import annotations

import statistics
import time
from contextlib import nullcontext

import timm
import torch
import torch.nn.functional as F
from torch import nn

from comp.models import create_model
from comp.tasks import Task


def _step_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor, amp: bool, loss_fn=F.cross_entropy):
    """One SGD training step (forward, backward, update), as the training loop does it, with `loss_fn`
    (logits, y) -> loss."""
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    # bfloat16 on CPU (no fp16 kernels there), float16 on CUDA as the training loop uses with a GradScaler.
    dtype = torch.bfloat16 if x.device.type == "cpu" else torch.float16
    autocast = (lambda: torch.autocast(x.device.type, dtype=dtype)) if amp else nullcontext

    def step() -> None:
        with autocast():
            loss = loss_fn(model(x).float(), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def time_steps(step, steps: int, device: torch.device) -> float:
    """Seconds for `steps` calls of `step`, waiting for the device at both ends."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def bench_model_step(
    names: tuple[str, ...] = ("resnet18", "resnet50", "resnet152"),
    batch: int = 16,
    size: int = 64,
    steps: int = 2,
    rounds: int = 5,
    warmup: int = 2,
    device: str = "cpu",
    amp: bool = False,
    channels_last: bool = True,
    num_classes: int = 10,
    task: str = "multiclass",
) -> list[dict]:
    """Images/s of a training step for each kit model `names` and timm's model of the same name.

    Args:
        names: kit model names (see `comp.models.list_models()`).
        batch, size: input batch (batch x 3 x size x size, random).
        steps: training steps per timed round; rounds: kit/timm alternations (medians are reported).
        warmup: untimed steps per model first (allocator, oneDNN/cuDNN algorithm selection).
        device: "cpu", "cuda", "cuda:1" ...
        amp: autocast (bfloat16 on CPU, float16 on CUDA).
        channels_last: both models and the input in NHWC, the faster layout for convs on CPU and GPU.
        task: multiclass (the kit's task loss: softmax cross-entropy; timm side F.cross_entropy) or
            multilabel (`num_classes` labels: the kit's comp.tasks BCE head and loss; timm side
            F.binary_cross_entropy_with_logits on the same 0/1 targets, as timm's train.py --bce-loss).

    Returns:
        One dict per name: name, batch, size, device, amp, channels_last, kit_ips, timm_ips and
        ratio (kit_ips / timm_ips; 1.0 means as fast as timm).
    """
    dev = torch.device(device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    rows = []
    for name in names:
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(batch, 3, size, size, generator=gen).to(dev, memory_format=fmt)
        labels = [str(i) for i in range(num_classes)]
        if task == "multilabel":
            y = torch.randint(0, 2, (batch, num_classes), generator=gen).float().to(dev)
            kit_task = Task("multilabel", labels, "sigmoid")
            timm_loss = F.binary_cross_entropy_with_logits
        else:
            y = torch.randint(0, num_classes, (batch,), generator=gen).to(dev)
            kit_task = Task("multiclass", labels, "softmax")
            timm_loss = F.cross_entropy
        models = {
            "kit": create_model(name, kit_task.num_logits),
            "timm": timm.create_model(name, num_classes=num_classes),
        }
        losses = {"kit": kit_task.loss, "timm": timm_loss}
        steps_fn = {}
        for side, model in models.items():
            model.to(dev, memory_format=fmt).train()
            steps_fn[side] = _step_fn(model, x, y, amp, losses[side])
            time_steps(steps_fn[side], warmup, dev)
        secs: dict[str, list[float]] = {"kit": [], "timm": []}
        for r in range(rounds):
            # Alternate who goes first, so neither side always runs right after the other's allocations.
            order = ("kit", "timm") if r % 2 == 0 else ("timm", "kit")
            for side in order:
                secs[side].append(time_steps(steps_fn[side], steps, dev))
        kit_ips = batch * steps / statistics.median(secs["kit"])
        timm_ips = batch * steps / statistics.median(secs["timm"])
        rows.append(dict(
            name=name, task=task, batch=batch, size=size, device=str(dev), amp=amp, channels_last=channels_last,
            kit_ips=kit_ips, timm_ips=timm_ips, ratio=kit_ips / timm_ips,
        ))
        del models, steps_fn
    return rows


if __name__ == "__main__":  # python -m benchmarks.models: a quick look, the benchmark script does more
    for r in bench_model_step():
        print(f"{r['name']:<10} kit {r['kit_ips']:7.1f} img/s  timm {r['timm_ips']:7.1f} img/s  ratio {r['ratio']:.3f}")
