"""Scoring without Spark: the trained pipeline as a small JSON artifact, and its inputs in Python.

``export_model`` writes every parameter the fitted PipelineModel uses (indexer labels,
one-hot sizes, assembler order, scaler mean and std, coefficients, threshold) to JSON;
``ScoringModel`` applies them with numpy, step by step as Spark does, so a service scores a
transaction exactly as the batch and streaming paths do. ``transaction_inputs`` is the
plain-Python twin of ``features.transaction_features`` for one transaction and the
account's online feature row.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from workbook import names

ARTIFACT_FILE = "scoring.json"
ARTIFACT_FORMAT = "workbook-logistic-pipeline/1"

# How the online row relates to the transaction's day.
PREVIOUS_DAY = "previous_day"  # the row describes the day before: the inputs use it
UNKNOWN_ACCOUNT = "unknown_account"  # no row: neutral defaults, as for an account without history
STALE = "stale"  # the row is older than the day before: neutral defaults, as the join gives


class UnknownCategoryError(ValueError):
    """A value the model cannot encode under its ``handleInvalid`` setting."""


class PointInTimeError(ValueError):
    """The online row describes the transaction's own day or later: using it would leak."""


# -- export ------------------------------------------------------------------------------------


def export_model(model, metadata: Mapping | None = None) -> dict:
    """The parameters of a fitted indexer, one-hot, assembler, scaler, logistic-regression pipeline.

    The decision threshold is the one set on the model's last stage (``train.set_threshold``);
    if ``metadata`` (the training run's record) names one, it must be the same, so Spark's
    ``prediction`` column and the exported model decide with the same value. The record
    itself stays in the training run: the export holds what scoring needs, nothing more.
    """
    from pyspark.ml.classification import LogisticRegressionModel
    from pyspark.ml.feature import (
        OneHotEncoderModel,
        StandardScalerModel,
        StringIndexerModel,
        VectorAssembler,
    )

    kinds = (
        StringIndexerModel,
        OneHotEncoderModel,
        VectorAssembler,
        StandardScalerModel,
        LogisticRegressionModel,
    )
    stages = list(model.stages)
    if len(stages) != len(kinds) or not all(map(isinstance, stages, kinds)):
        found = [type(s).__name__ for s in stages]
        expected = [k.__name__ for k in kinds]
        raise ValueError(f"cannot export stages {found}; expected {expected}")
    indexer, encoder, assembler, scaler, lr = stages
    if lr.numClasses != 2:
        raise ValueError(f"expected a binary classifier, got {lr.numClasses} classes")

    if indexer.isSet("inputCols"):
        inputs, outputs = indexer.getInputCols(), indexer.getOutputCols()
        labels = indexer.labelsArray
    else:
        inputs, outputs = [indexer.getInputCol()], [indexer.getOutputCol()]
        labels = [indexer.labels]
    indexers = [
        {"input": i, "output": o, "labels": list(ls), "handle_invalid": indexer.getHandleInvalid()}
        for i, o, ls in zip(inputs, outputs, labels, strict=True)
    ]
    if encoder.isSet("inputCols"):
        enc_inputs, enc_outputs = encoder.getInputCols(), encoder.getOutputCols()
    else:
        enc_inputs, enc_outputs = [encoder.getInputCol()], [encoder.getOutputCol()]
    encoders = [
        {
            "input": i,
            "output": o,
            "category_size": int(size),
            "drop_last": encoder.getDropLast(),
            "handle_invalid": encoder.getHandleInvalid(),
        }
        for i, o, size in zip(enc_inputs, enc_outputs, encoder.categorySizes, strict=True)
    ]
    _check_wiring(indexers, encoders, assembler, scaler, lr)

    threshold = float(lr.getThreshold())
    if metadata is not None and float(metadata.get("threshold", threshold)) != threshold:
        raise ValueError(
            f"metadata threshold {metadata['threshold']} differs from the model's "
            f"{threshold}: call train.set_threshold before saving"
        )
    params = {
        "format": ARTIFACT_FORMAT,
        "indexers": indexers,
        "encoders": encoders,
        "assembler": {
            "inputs": list(assembler.getInputCols()),
            "handle_invalid": assembler.getHandleInvalid(),
        },
        "scaler": {
            "with_mean": scaler.getWithMean(),
            "with_std": scaler.getWithStd(),
            "mean": scaler.mean.toArray().tolist(),
            "std": scaler.std.toArray().tolist(),
        },
        "logistic_regression": {
            "coefficients": lr.coefficients.toArray().tolist(),
            "intercept": float(lr.intercept),
        },
        "threshold": threshold,
    }
    return {"model_version": _version(params), **params}


def export_json(model, metadata: Mapping | None = None) -> str:
    return json.dumps(export_model(model, metadata), indent=2)


def _version(params: dict) -> str:
    """A content hash: the same parameters and threshold give the same version."""
    canonical = json.dumps(params, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def _check_wiring(indexers, encoders, assembler, scaler, lr) -> None:
    """Each stage must read what the one before it writes, or the export would mean nothing."""
    if [e["input"] for e in encoders] != [i["output"] for i in indexers]:
        raise ValueError("the one-hot encoder must read the indexer's output columns")
    encoded = {e["output"] for e in encoders}
    if not encoded <= set(assembler.getInputCols()):
        raise ValueError("the assembler must take every one-hot column")
    if scaler.getInputCol() != assembler.getOutputCol():
        raise ValueError("the scaler must read the assembler's output")
    if lr.getFeaturesCol() != scaler.getOutputCol():
        raise ValueError("the classifier must read the scaler's output")


# -- loading -----------------------------------------------------------------------------------


def read_text(location: str) -> str:
    """A small file from a local path, or from S3 (``s3a://bucket/key``) on the stack profile."""
    parsed = urlparse(location)
    if parsed.scheme not in ("s3", "s3a"):
        return Path(location).read_text()
    from minio.error import S3Error

    from workbook.services import s3_client

    try:
        response = s3_client().get_object(parsed.netloc, parsed.path.lstrip("/"))
    except S3Error as error:
        if error.code in ("NoSuchKey", "NoSuchBucket"):
            raise FileNotFoundError(location) from None
        raise
    try:
        return response.read().decode("utf-8")
    finally:
        response.close()
        response.release_conn()


def artifact_location(model_location: str) -> str:
    return f"{model_location.rstrip('/')}/{ARTIFACT_FILE}"


# -- the model in numpy ------------------------------------------------------------------------


def _is_missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


class ScoringModel:
    """The exported pipeline, applied with numpy exactly as Spark applies each stage."""

    def __init__(self, artifact: Mapping, version: str | None = None):
        """``version``: the registered version it came from; the artifact's hash by default."""
        if artifact.get("format") != ARTIFACT_FORMAT:
            raise ValueError(f"not a scoring artifact of format {ARTIFACT_FORMAT}")
        self.artifact = artifact
        self.version: str = version or artifact["model_version"]
        self.threshold: float = float(artifact["threshold"])
        self._indexers = artifact["indexers"]
        self._label_index = [
            {label: i for i, label in enumerate(ix["labels"])} for ix in self._indexers
        ]
        self._encoders = {e["output"]: (k, e) for k, e in enumerate(artifact["encoders"])}
        self._inputs = list(artifact["assembler"]["inputs"])
        self._assembler_invalid = artifact["assembler"]["handle_invalid"]
        scaler = artifact["scaler"]
        std = np.asarray(scaler["std"], float)
        # Spark multiplies by 1/std and maps a zero std to a zero output.
        self._shift = np.asarray(scaler["mean"], float) if scaler["with_mean"] else None
        self._scale = (
            np.divide(1.0, std, out=np.zeros_like(std), where=std != 0)
            if scaler["with_std"]
            else None
        )
        lr = artifact["logistic_regression"]
        self._coefficients = np.asarray(lr["coefficients"], float)
        self._intercept = float(lr["intercept"])

    @classmethod
    def from_json(cls, text: str) -> ScoringModel:
        return cls(json.loads(text))

    @classmethod
    def load(cls, location: str) -> ScoringModel:
        """From the artifact file, or from the model folder that holds it."""
        if not location.endswith(".json"):
            location = artifact_location(location)
        return cls.from_json(read_text(location))

    @property
    def categorical_inputs(self) -> list[str]:
        return [ix["input"] for ix in self._indexers]

    @property
    def numeric_inputs(self) -> list[str]:
        return [c for c in self._inputs if c not in self._encoders]

    def _index(self, k: int, value) -> int:
        """StringIndexerModel: the label's index; null or unseen under "keep" is len(labels)."""
        indexer = self._indexers[k]
        index = None if _is_missing(value) else self._label_index[k].get(str(value))
        if index is not None:
            return index
        if indexer["handle_invalid"] == "keep":
            return len(indexer["labels"])
        raise UnknownCategoryError(
            f"{indexer['input']}={value!r} was not seen in training and the indexer's "
            f"handleInvalid is {indexer['handle_invalid']!r} (Spark would "
            f"{'drop the row' if indexer['handle_invalid'] == 'skip' else 'fail'})"
        )

    def _one_hot(self, encoder: dict, index: int) -> np.ndarray:
        """OneHotEncoderModel, including how dropLast and handleInvalid size the vector."""
        size, keep = encoder["category_size"], encoder["handle_invalid"] == "keep"
        if not 0 <= index < size:
            if not keep:
                raise UnknownCategoryError(f"{encoder['input']}: index {index} out of range")
            index = size
        # Spark's sizes: "keep" adds a slot for invalid values, dropLast removes the last one.
        width = size + int(keep) - int(encoder["drop_last"])
        out = np.zeros(width)
        if index < width:
            out[index] = 1.0
        return out

    def vector(self, row: Mapping) -> np.ndarray:
        """The assembled, unscaled feature vector of one row (``raw_features`` in Spark)."""
        parts = []
        for column in self._inputs:
            if column in self._encoders:
                k, encoder = self._encoders[column]
                index = self._index(k, row.get(self._indexers[k]["input"]))
                parts.append(self._one_hot(encoder, index))
                continue
            value = row.get(column)
            if _is_missing(value):
                if self._assembler_invalid != "keep":
                    raise ValueError(
                        f"{column} is null or NaN and the assembler's handleInvalid is "
                        f"{self._assembler_invalid!r}"
                    )
                value = math.nan
            parts.append(np.array([float(value)]))
        return np.concatenate(parts)

    def probabilities(self, rows) -> np.ndarray:
        """The probability of fraud of each row (Spark's ``probability[1]``).

        ``rows``: a pandas frame, or a sequence of mappings.
        """
        records = rows.to_dict("records") if hasattr(rows, "to_dict") else list(rows)
        if not records:
            return np.empty(0)
        features = np.vstack([self.vector(r) for r in records])
        if self._shift is not None:
            features = features - self._shift
        if self._scale is not None:
            features = features * self._scale
        margin = features @ self._coefficients + self._intercept
        return 1.0 / (1.0 + np.exp(-margin))

    def probability(self, row: Mapping) -> float:
        return float(self.probabilities([row])[0])


# -- the transaction's inputs, in plain Python -------------------------------------------------


def _utc(timestamp) -> datetime:
    """A timestamp as aware UTC; a naive one is read as UTC, Spark's session time zone."""
    if isinstance(timestamp, str):
        timestamp = datetime.fromisoformat(timestamp)
    if hasattr(timestamp, "to_pydatetime"):  # a pandas Timestamp
        timestamp = timestamp.to_pydatetime()
    if timestamp.tzinfo is None:
        return timestamp.replace(tzinfo=UTC)
    return timestamp.astimezone(UTC)


def _as_date(value) -> date:
    if isinstance(value, datetime):  # pandas' Timestamp is one too
        return value.date()
    if isinstance(value, str):
        return date.fromisoformat(value)
    return value


def history_status(timestamp, account_row: Mapping | None) -> str:
    """Whether the online row is the one the point-in-time join would use for this transaction.

    The join takes the account's row for the day before the transaction. The online store
    holds only the latest row: if that row is the day before, the inputs use it; if it is
    older (features not refreshed since), the join would find no row either and gives the
    neutral defaults; if it describes the transaction's own day or later, it would leak the
    future, so ``PointInTimeError`` is raised (score such a transaction in batch).
    """
    if account_row is None:
        return UNKNOWN_ACCOUNT
    day = _utc(timestamp).date()
    row_day = _as_date(account_row[names.FEATURE_DATE])
    if row_day == day - timedelta(days=1):
        return PREVIOUS_DAY
    if row_day < day:
        return STALE
    raise PointInTimeError(
        f"the online features of {account_row.get(names.ACCOUNT_ID)} describe {row_day}, "
        f"not a day before the transaction's day {day}; score past transactions in batch"
    )


def _coalesce(value, default):
    return default if _is_missing(value) else value


def _log(x: float) -> float | None:
    return math.log(x) if x > 0 else None  # Spark's log is null outside its domain


def _log1p(x: float) -> float | None:
    return math.log1p(x) if x > -1 else None


def transaction_inputs(transaction: Mapping, account_row: Mapping | None) -> dict[str, float]:
    """The numeric model inputs of one transaction, as ``features.transaction_features`` gives.

    ``transaction`` holds the event's attributes (``timestamp``, ``amount``); ``account_row``
    is the account's online feature row (with ``feature_date``), or None for an unknown
    account. Nulls may come as None (PostgreSQL) or NaN (pandas). Keep this in step with the
    Spark definition; tests/unit/test_scoring.py compares the two on simulated data.
    """
    timestamp = _utc(transaction[names.TIMESTAMP])
    history = account_row if history_status(timestamp, account_row) == PREVIOUS_DAY else {}
    amount = float(transaction[names.AMOUNT])
    typical = float(_coalesce(history.get(names.AMOUNT_AVG_30D), amount))
    inputs = {
        names.AMOUNT_LOG: _log1p(amount),
        names.AMOUNT_VS_30D_AVG: _log((amount + 1) / (typical + 1)),
        names.IS_NIGHT: float(timestamp.hour < names.NIGHT_END_HOUR),
        names.PREV_DAY_COUNT: float(_coalesce(history.get(names.DAILY_TRANSACTION_COUNT), 0)),
        names.TXN_COUNT_7D: float(_coalesce(history.get(names.TXN_COUNT_7D), 0)),
        names.AMOUNT_SUM_7D_LOG: _log1p(float(_coalesce(history.get(names.AMOUNT_SUM_7D), 0.0))),
        names.AMOUNT_MAX_7D_LOG: _log1p(float(_coalesce(history.get(names.AMOUNT_MAX_7D), 0.0))),
        names.NIGHT_SHARE_7D: float(_coalesce(history.get(names.NIGHT_SHARE_7D), 0.0)),
        names.TXN_COUNT_30D: float(_coalesce(history.get(names.TXN_COUNT_30D), 0)),
        names.PREV_DAY_NEW_MERCHANTS: float(_coalesce(history.get(names.DAILY_NEW_MERCHANTS), 0)),
    }
    return {c: inputs[c] for c in names.NUMERIC_INPUTS}


def score_transaction(
    model: ScoringModel, transaction: Mapping, account_row: Mapping | None
) -> dict:
    """Fraud probability and decision of one transaction, with what the inputs were built from."""
    status = history_status(transaction[names.TIMESTAMP], account_row)
    inputs = transaction_inputs(transaction, account_row)
    probability = model.probability({**transaction, **inputs})
    notes = {
        UNKNOWN_ACCOUNT: "no online features for this account: scored with the neutral "
        "defaults of an account without history",
        STALE: "the online features are older than the day before the transaction: scored "
        "with the neutral defaults, as the point-in-time join would",
    }
    return {
        "fraud_probability": probability,
        "is_fraud": probability >= model.threshold,
        "threshold": model.threshold,
        "model_version": model.version,
        "history": status,
        "features_date": None if account_row is None else _as_date(account_row[names.FEATURE_DATE]),
        "note": notes.get(status),
        "inputs": inputs,
    }
