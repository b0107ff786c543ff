"""From predictions to Kaggle: the submission frame and its validation (submission), the submit flow and
its records (kaggle), the offline package for code competitions (package)."""

from comp.submit.submission import make_submission

__all__ = ["make_submission"]
