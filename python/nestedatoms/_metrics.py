"""Recovery metrics (model section 9)."""

from __future__ import annotations

import numpy as np
from scipy.special import comb

__all__ = ["adjusted_rand_index"]


def adjusted_rand_index(truth, labels) -> float:
    """Adjusted Rand index (Hubert and Arabie) between two labelings of the same items."""
    truth, labels = np.asarray(truth), np.asarray(labels)
    if truth.shape != labels.shape:
        raise ValueError(f"labelings differ in length: {truth.shape} vs {labels.shape}.")
    _, t = np.unique(truth, return_inverse=True)
    _, c = np.unique(labels, return_inverse=True)
    table = np.zeros((t.max() + 1, c.max() + 1))
    np.add.at(table, (t, c), 1)
    sum_cells = comb(table, 2).sum()
    sum_rows = comb(table.sum(axis=1), 2).sum()
    sum_cols = comb(table.sum(axis=0), 2).sum()
    total = comb(truth.size, 2)
    expected = sum_rows * sum_cols / total if total > 0 else 0.0
    max_index = 0.5 * (sum_rows + sum_cols)
    if max_index == expected:  # both labelings trivial (one cluster, or all singletons)
        return 1.0
    return float((sum_cells - expected) / (max_index - expected))
