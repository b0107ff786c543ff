"""The device a run computes on and its autocast dtype: one choice for training, validation and
prediction alike."""

from __future__ import annotations

import torch

from comp.errors import UserError


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """The `device` config value as a torch.device: `auto` and `cuda` = this process's GPU (`local_rank`,
    set by torchrun) when CUDA is there, else the CPU; `cpu` and `cuda:N` as given.

    Raises:
        UserError: a CUDA device asked for on a machine without one.
    """
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"bad value for config key 'device': {name!r} but no CUDA device is available")
    if name in ("auto", "cuda"):
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def amp_dtype_for(device: torch.device, amp: bool) -> torch.dtype | None:
    """The autocast dtype of training and prediction: bf16 only where the GPU has it natively (Ampere+;
    Kaggle's T4/P100 would emulate it, slowly), fp16 otherwise (training adds a GradScaler); none on the
    CPU or with amp off."""
    if device.type != "cuda" or not amp:
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16


def compile_model(module: torch.nn.Module, value: bool | str) -> torch.nn.Module:
    """`module` under torch.compile as the config's `train.compile` / `predict.compile` asks: false = the
    module itself; true or `default` = torch.compile's default mode (Inductor, no CUDA graphs); or the mode
    named (`reduce-overhead`: CUDA graphs, for small batches that are launch-bound; `max-autotune`: Triton
    autotuning of matmuls/convs and CUDA graphs, minutes of compilation; `max-autotune-no-cudagraphs`).
    The modes are torch's (https://pytorch.org/docs/stable/generated/torch.compile.html); the config check
    (comp.config) has already refused any other value, so an unknown one here is the kit's bug (ValueError).
    """
    from comp.schema import COMPILE_MODES

    if value is False:
        return module
    if value is not True and value not in COMPILE_MODES:
        raise ValueError(f"compile_model: {value!r} is neither a bool nor one of {COMPILE_MODES}")
    return torch.compile(module, mode=None if value is True or value == "default" else value)


def fast_math(device: torch.device) -> str:
    """Set the CUDA math flags where a run starts (never at import: importing the kit changes nothing global),
    and say what they are, for the run's log: cuDNN's autotuner (the fastest convolution algorithms for the
    run's fixed shapes) and TF32 for float32 matmuls and convolutions on Ampere and newer (~free speed for the
    parts autocast leaves in float32). On a CPU nothing is set and "" is returned."""
    if device.type != "cuda":
        return ""
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    return "cudnn.benchmark on, TF32 matmuls and convolutions on"
