"""How training reads images: decoded from the download, or from the pre-resized cache when built."""

from __future__ import annotations

from functools import partial
from typing import Any, Callable

import numpy as np

from comp.images import load_image


def image_loader(cfg: Any, comp: Any) -> Callable[[str], np.ndarray]:
    """`load(path) -> (image_size, image_size, 3) uint8` for the Dataset."""
    return partial(load_image, size=cfg.image_size)
