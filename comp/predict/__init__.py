"""Test predictions: every trained fold × every TTA view (predict), and the decoding of ordinal grades
with cut-points tuned on the out-of-fold predictions (thresholds)."""

from comp.predict.predict import predict_test

__all__ = ["predict_test"]
