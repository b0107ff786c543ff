"""A stand-in for Kaggle's `kaggle_evaluation` inference server and gateway (the real package ships inside each
served competition's data and is not installable), written from the protocol's public description:

    import kaggle_evaluation.<comp>_inference_server as s
    server = s.<Comp>InferenceServer(predict)
    if os.getenv("KAGGLE_IS_COMPETITION_RERUN"): server.serve()
    else: server.run_local_gateway((data_paths...))

The gateway calls predict() once per test item, with the item's id and the path of its image, within a time
limit per call; checks what comes back (a pandas or polars DataFrame, one row, the sample submission's
columns, the item's id, no missing value); and writes the answers to submission.parquet in the working
folder. A wrong answer ends the run with GatewayRuntimeError, as the real gateway's does. Self-contained
(the standard library, pandas, pyarrow), so the notebook tests copy this file into a competition's data
folder as kaggle_evaluation/<comp>_inference_server.py.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pandas as pd

ROW_TIMEOUT_S = 600.0  # per call; the real gateways allow minutes per item (a longer first call to load models)
SAMPLE = "sample_submission.csv"
TEST_IMAGES = "test"


class GatewayRuntimeError(Exception):
    """What the real gateway raises: `error_type` (INVALID_SUBMISSION, SERVER_RAISED_EXCEPTION, TIMEOUT)."""

    def __init__(self, error_type: str, details: str):
        super().__init__(f"{error_type}: {details}")
        self.error_type = error_type


class Gateway:
    """One local run over the test items of the data folder `root`: ids and columns from its sample
    submission, each id's image found in its test folder by name."""

    def __init__(self, data_paths: tuple[str, ...] | None = None):
        self.root = Path((data_paths or (os.environ.get("KAGGLE_COMPETITION_DATA", "."),))[0])
        self.sample = pd.read_csv(self.root / SAMPLE, dtype=str, keep_default_na=False)
        self.id_column = self.sample.columns[0]
        self.calls: list[tuple[str, str]] = []

    def items(self):
        for item_id in self.sample[self.id_column]:
            found = sorted((self.root / TEST_IMAGES).glob(f"{item_id}.*"))
            yield item_id, str(found[0]) if found else str(self.root / TEST_IMAGES / item_id)

    def check(self, item_id: str, answer) -> pd.DataFrame:
        """The answer as a pandas frame, or GatewayRuntimeError(INVALID_SUBMISSION) saying what is wrong."""
        if type(answer).__module__.split(".")[0] == "polars":
            answer = answer.to_pandas()
        if not isinstance(answer, pd.DataFrame):
            raise GatewayRuntimeError("INVALID_SUBMISSION", f"predict returned {type(answer).__name__} for "
                                                            f"{item_id!r}, not a pandas or polars DataFrame")
        if list(answer.columns) != list(self.sample.columns):
            raise GatewayRuntimeError("INVALID_SUBMISSION", f"columns {list(answer.columns)} for {item_id!r}, "
                                                            f"expected {list(self.sample.columns)}")
        if len(answer) != 1:
            raise GatewayRuntimeError("INVALID_SUBMISSION", f"{len(answer)} rows for {item_id!r}, expected 1")
        if str(answer[self.id_column].iloc[0]) != item_id:
            raise GatewayRuntimeError("INVALID_SUBMISSION", f"id {answer[self.id_column].iloc[0]!r} answered for "
                                                            f"{item_id!r}")
        if answer.isna().any().any():
            raise GatewayRuntimeError("INVALID_SUBMISSION", f"a missing value for {item_id!r}")
        return answer

    def run(self, predict) -> Path:
        """Call `predict(id, path)` per item, check each answer, write submission.parquet; its path."""
        rows = []
        for item_id, path in self.items():
            self.calls.append((item_id, path))
            start = time.monotonic()
            try:
                answer = predict(item_id, path)
            except Exception as e:
                raise GatewayRuntimeError("SERVER_RAISED_EXCEPTION", f"{type(e).__name__}: {e}") from e
            if time.monotonic() - start > ROW_TIMEOUT_S:
                raise GatewayRuntimeError("TIMEOUT", f"predict took over {ROW_TIMEOUT_S:g} s on {item_id!r}")
            rows.append(self.check(item_id, answer))
        out = Path.cwd() / "submission.parquet"
        pd.concat(rows, ignore_index=True).to_parquet(out, index=False)
        return out


class InferenceServer:
    """The notebook's side: holds predict(); `run_local_gateway` plays the gateway over the public data,
    `serve` as the rerun on the hidden set would (here: the same local run)."""

    def __init__(self, *predict_fns):
        if not predict_fns or not all(callable(f) for f in predict_fns):
            raise ValueError("InferenceServer needs the predict function(s) it serves")
        self.predict = predict_fns[0]
        self.gateway: Gateway | None = None

    def run_local_gateway(self, data_paths: tuple[str, ...] | None = None) -> Path:
        self.gateway = Gateway(data_paths)
        return self.gateway.run(self.predict)

    def serve(self) -> Path:
        return self.run_local_gateway()


TinyInferenceServer = InferenceServer  # the competition-specific name a notebook imports
