"""The report's figures (comp.report.plots): readable at every size of the problem."""

from __future__ import annotations

import cv2
import numpy as np

from comp.report.plots import confusion_figure


def test_a_two_class_confusion_matrix_has_room(tmp_path):
    path = tmp_path / "c.png"
    confusion_figure(np.array([0, 1, 1, 0]), np.array([0, 1, 0, 0]), ["NORMAL", "PNEUMONIA"], path)
    h, w = cv2.imread(str(path)).shape[:2]
    assert w >= 400 and h >= 350, (w, h)  # at least 4 x 3.5 inches at 100 dpi
