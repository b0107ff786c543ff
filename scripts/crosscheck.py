#!/usr/bin/env python
"""Check the kit's hand-written ResNets against timm's: same parameter count, and with timm's weights
copied in (strict), the same outputs (eval mode) and the same gradients (train mode, one backward).

    python scripts/crosscheck.py [--depths resnet18 resnet50] [--size 64] [--batch 2]

Prints one row per depth; exits 1 if any check fails.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import timm  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from comp.models import create_model, list_models  # noqa: E402

# float32 tolerances. The two models run the same ops in the same order, so the diffs are exactly 0 in
# practice; the bounds leave room for a reordered reduction (~1e-7 relative per op, summed over depth).
OUT_ATOL = 1e-5  # logits are O(10) after the BN randomisation below
GRAD_RTOL = 1e-4  # per tensor: max|g_kit - g_timm| / max|g_timm|


def randomize_batchnorm(model: nn.Module, size: int, batch: int, generator: torch.Generator) -> None:
    """Make every BN matter: random gamma/beta (timm zero-inits the last gamma of each branch, which would
    hide a wrong branch), then running stats from one train-mode pass so eval outputs stay O(1..10)."""
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for m in bns:
            m.weight.copy_(torch.rand(m.weight.shape, generator=generator) + 0.5)  # U(0.5, 1.5)
            m.bias.copy_(torch.randn(m.bias.shape, generator=generator) * 0.1)
            m.momentum = 1.0  # running stats := this batch's
        model.train()
        model(torch.randn(batch, 3, size, size, generator=generator))
        for m in bns:
            m.momentum = 0.1


def crosscheck(name: str, size: int = 64, batch: int = 2, seed: int = 0) -> dict:
    """Compare kit `name` with timm's model of the same name; returns one table row."""
    g = torch.Generator().manual_seed(seed)
    ref = timm.create_model(name)  # 1000 classes: the familiar ImageNet parameter counts
    randomize_batchnorm(ref, size, batch, g)
    kit = create_model(name, num_classes=1000)
    kit.load_state_dict(ref.state_dict(), strict=True)

    x = torch.randn(batch, 3, size, size, generator=g)
    target = torch.randint(0, 1000, (batch,), generator=g)
    with torch.no_grad():
        out_diff = (kit.eval()(x) - ref.eval()(x)).abs().max().item()

    for m in (kit, ref):
        m.train()
        F.cross_entropy(m(x), target).backward()
    kit_params, ref_params = dict(kit.named_parameters()), dict(ref.named_parameters())
    grad_diff = max(
        ((kit_params[n].grad - p.grad).abs().max() / p.grad.abs().max().clamp_min(1e-12)).item()
        for n, p in ref_params.items()
    )
    n_kit = sum(p.numel() for p in kit.parameters())
    n_ref = sum(p.numel() for p in ref.parameters())
    ok = n_kit == n_ref and out_diff <= OUT_ATOL and grad_diff <= GRAD_RTOL
    return dict(name=name, kit_params=n_kit, timm_params=n_ref, out_diff=out_diff, grad_diff=grad_diff, ok=ok)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--depths", nargs="+", default=list_models(), choices=list_models(), metavar="NAME")
    parser.add_argument("--size", type=int, default=64, help="image size (default 64)")
    parser.add_argument("--batch", type=int, default=2, help="batch size (default 2)")
    args = parser.parse_args(argv)

    print(f"timm {timm.__version__}, torch {torch.__version__}, float32, {args.batch}x3x{args.size}x{args.size}")
    header = (
        f"{'model':<10} {'kit params':>12} {'timm params':>12} {'max|out diff|':>14} {'max grad rel diff':>18}  result"
    )
    print(header)
    print("-" * len(header))
    failed = False
    for name in args.depths:
        t0 = time.perf_counter()
        r = crosscheck(name, args.size, args.batch)
        failed |= not r["ok"]
        print(
            f"{name:<10} {r['kit_params']:>12,} {r['timm_params']:>12,} {r['out_diff']:>14.1e} "
            f"{r['grad_diff']:>18.1e}  {'ok' if r['ok'] else 'FAIL'} ({time.perf_counter() - t0:.1f}s)"
        )
    print(f"tolerances: outputs {OUT_ATOL:g} absolute, gradients {GRAD_RTOL:g} relative per tensor")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
