"""A small, real credit-scoring model shared by the framework examples.

The model is a scikit-learn ``Pipeline`` (``StandardScaler`` then ``LogisticRegression``)
trained at start-up on synthetic applicants generated with a fixed seed, so every run gives
the same model and nothing is downloaded. This module imports no web framework.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

FEATURES: tuple[str, ...] = (
    "income",  # yearly income, in thousands
    "debt_ratio",  # monthly debt payments / monthly income
    "age",  # years
    "credit_lines",  # open credit lines
    "late_payments",  # payments 30+ days late in the last two years
    "loan_amount",  # requested amount, in thousands
)

# What score_rows answers for each row, in order: the columns of the collected predictions.
PREDICTIONS: tuple[str, ...] = ("probability_of_default", "decision")

SERVICE = "credit"
MODEL_NAME = "best_model"
MODEL_VERSION = "10"
APPROVE_BELOW = 0.35  # probability of default under which an application is approved
SEED = 20240917


def synthetic_applicants(n: int = 5000, seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """``n`` synthetic applicants (columns in ``FEATURES`` order) and whether each defaulted."""
    rng = np.random.default_rng(seed)
    income = rng.lognormal(mean=np.log(55.0), sigma=0.5, size=n)
    debt_ratio = np.clip(rng.beta(2.0, 5.0, size=n), 0.0, 1.0)
    age = rng.integers(18, 80, size=n).astype(float)
    credit_lines = rng.poisson(4.0, size=n).astype(float)
    late_payments = rng.poisson(0.6, size=n).astype(float)
    loan_amount = np.clip(rng.normal(20.0, 10.0, size=n), 1.0, None)
    logit = (
        -1.2
        - 0.025 * (income - 55.0)
        + 4.0 * (debt_ratio - 0.3)
        - 0.02 * (age - 45.0)
        - 0.08 * (credit_lines - 4.0)
        + 0.9 * late_payments
        + 0.03 * (loan_amount - 20.0)
    )
    defaulted = rng.random(n) < 1.0 / (1.0 + np.exp(-logit))
    X = np.column_stack([income, debt_ratio, age, credit_lines, late_payments, loan_amount])
    return X, defaulted.astype(int)


def train_model(n: int = 5000, seed: int = SEED) -> Pipeline:
    """Train the credit model on ``n`` synthetic applicants; deterministic for a given seed."""
    X, y = synthetic_applicants(n, seed)
    model = Pipeline([("scale", StandardScaler()), ("classify", LogisticRegression(max_iter=1000))])
    model.fit(X, y)
    return model


def _feature_value(row: dict[str, Any], index: int, name: str) -> float:
    if name not in row:
        raise ValueError(f"row {index}: missing feature {name!r} (expected: {', '.join(FEATURES)})")
    value = row[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        kind = type(value).__name__
        raise ValueError(f"row {index}: feature {name!r} must be a number, got {kind} {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"row {index}: feature {name!r} must be finite, got {value!r}")
    return number


def validate_rows(rows: Any) -> np.ndarray:
    """The feature matrix of ``rows``; raises ValueError naming the first bad row and feature."""
    if not isinstance(rows, list) or not rows:
        raise ValueError("expected a non-empty list of rows")
    matrix = np.empty((len(rows), len(FEATURES)), dtype=float)
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ValueError(f"row {i}: expected an object of features, got {type(row).__name__}")
        for j, name in enumerate(FEATURES):
            matrix[i, j] = _feature_value(row, i, name)
    return matrix


def score_rows(model: Pipeline, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Probability of default and a decision for each row, in order."""
    return score_matrix(model, validate_rows(rows))


def score_matrix(model: Pipeline, matrix: np.ndarray) -> list[dict[str, Any]]:
    """:func:`score_rows` of rows already validated into a feature matrix."""
    probabilities = model.predict_proba(matrix)[:, 1]
    return [
        {
            "probability_of_default": round(float(p), 6),
            "decision": "approve" if p < APPROVE_BELOW else "decline",
        }
        for p in probabilities
    ]


def example_row(rng: np.random.Generator | None = None) -> dict[str, Any]:
    """One plausible applicant, for demos and tests."""
    rng = rng or np.random.default_rng()
    return {
        "income": round(float(rng.lognormal(np.log(55.0), 0.5)), 1),
        "debt_ratio": round(float(rng.beta(2.0, 5.0)), 3),
        "age": int(rng.integers(18, 80)),
        "credit_lines": int(rng.poisson(4.0)),
        "late_payments": int(rng.poisson(0.6)),
        "loan_amount": round(float(max(1.0, rng.normal(20.0, 10.0))), 1),
    }
