"""From trained folds to a submission: every fold x every TTA view over the test set (predict), the
out-of-fold predictions made the same way (oof_tta), the decoding fit on them (thresholds, cutoff), the
submission frame in the sample's order and its checks (submission, checks), and `make_submission`, the
prediction entry point that runs those steps in order."""

from comp.predict.predict import predict_test
from comp.predict.submission import make_submission

__all__ = ["make_submission", "predict_test"]
