"""Prediction tables: a typed DataFrame, streamed CSV rows, Parquet files, and reading them back."""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from emodistill.core.atomic import atomic_write
from emodistill.predict.columns import INTEGER_COLUMNS, FramePrediction


def table(rows: list[dict[str, object]], columns: list[str]) -> pd.DataFrame:
    """Rows -> a DataFrame with nullable integer, boolean and string columns for empty frames."""
    return _typed(pd.DataFrame.from_records(rows, columns=columns))


def _typed(frame: pd.DataFrame) -> pd.DataFrame:
    dtypes: dict[str, str] = {}
    for column in frame.columns:
        if column in INTEGER_COLUMNS:
            dtypes[column] = "Int64"
        elif column.endswith("_present"):
            dtypes[column] = "Int8"
        elif column == "ood_flag":
            dtypes[column] = "boolean"
        elif column in ("file", "expression"):
            dtypes[column] = "string"
        else:
            dtypes[column] = "float64"
    return frame.astype(dtypes)


def _csv_value(value: object) -> object:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    if isinstance(value, bool | np.bool_):
        return int(value)
    if isinstance(value, float):
        return round(value, 6)
    return value


def write_csv(path: Path, predictions: Iterator[FramePrediction], columns: list[str],
              each: Callable[[FramePrediction], None]) -> None:
    """Stream rows into `path` (atomically: a failed run leaves no half-written table)."""

    def write(tmp: Path) -> None:
        with tmp.open("w", newline="") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(columns)
            for prediction in predictions:
                writer.writerow([_csv_value(prediction.row[c]) for c in columns])
                each(prediction)

    atomic_write(path, write, what="the prediction table")


def write_parquet(path: Path, predictions: Iterator[FramePrediction], columns: list[str],
                  each: Callable[[FramePrediction], None]) -> None:
    rows = []
    for prediction in predictions:
        rows.append(prediction.row)
        each(prediction)
    frame = table(rows, columns)
    atomic_write(path, lambda tmp: frame.to_parquet(tmp, index=False), what="the prediction table")


WRITERS = {".csv": write_csv, ".parquet": write_parquet}


def read_table(path: Path) -> pd.DataFrame:
    """A prediction table written by `predict_command`, with the dtypes of `table`."""
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    return _typed(pd.read_csv(path, dtype={"file": "string", "expression": "string"}))


def largest_difference(a: pd.DataFrame, b: pd.DataFrame) -> float:
    """The largest difference between two prediction tables of one input, over every numeric
    column but the timestamp, on the frames where both found a face (0 when none)."""
    found = a["face"].astype(bool) & b["face"].astype(bool)
    numeric = [c for c in a.columns if a[c].dtype.kind == "f" and c != "timestamp"]
    gap = np.abs(a.loc[found, numeric].to_numpy(float) - b.loc[found, numeric].to_numpy(float))
    return float(np.nanmax(gap)) if gap.size else 0.0

