"""The entropy change of merged cell atoms (``merged_entropy_change``, the merge moves' judge):
against the entropy of the merged xi computed directly, the core against the NumPy twin, and
bitwise equality for any number of threads."""

import numpy as np
import pytest
from scipy.special import entr

from nestedatoms import reference as ref
from nestedatoms._backend import core_module


def _sparse_xi(rng, N, L):
    logits = rng.normal(scale=8.0, size=(N, L))
    xi = np.exp(logits - logits.max(axis=1, keepdims=True))
    xi[xi < 1e-3] = 0.0                      # many exact zeros, as the cell step leaves
    return np.ascontiguousarray(xi / xi.sum(axis=1, keepdims=True))


@pytest.mark.parametrize("weighted", [False, True])
def test_the_change_is_the_entropy_after_minus_before(backend, weighted):
    rng = np.random.default_rng(0)
    sizes = rng.integers(1, 40, size=25)
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    xi = _sparse_xi(rng, int(offsets[-1]), 7)
    zeta = rng.uniform(0.2, 1.0, size=sizes.size) if weighted else None
    w = np.ones(xi.shape[0]) if zeta is None else np.repeat(zeta, sizes)
    groups = [[0, 1], [2, 5, 6], [3], [4, 0]]
    got = backend.merged_entropy_change(xi, groups, offsets, zeta)
    for g, change in zip(groups, got):
        merged = np.delete(xi, g[1:], axis=1)
        merged[:, g[0] - sum(1 for c in g[1:] if c < g[0])] = xi[:, g].sum(axis=1)
        want = w @ entr(merged).sum(axis=1) - w @ entr(xi).sum(axis=1)
        np.testing.assert_allclose(change, want, rtol=1e-10, atol=1e-10)
    assert got[2] == 0.0                                  # a single column: no change
    assert np.all(got[[0, 1, 3]] < 0.0)                   # merging loses entropy


def test_the_core_matches_the_twin_and_ignores_the_thread_count():
    core = core_module()
    rng = np.random.default_rng(1)
    sizes = rng.integers(1, 3000, size=40)
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    xi = _sparse_xi(rng, int(offsets[-1]), 9)
    zeta = rng.uniform(0.2, 1.0, size=sizes.size)
    groups = [[0, 8], [1, 2, 3, 4], [5, 6]]
    one = core.merged_entropy_change(xi, groups, offsets, zeta, 1)
    two = core.merged_entropy_change(xi, groups, offsets, zeta, 2)
    np.testing.assert_array_equal(one, two)
    np.testing.assert_allclose(one, ref.merged_entropy_change(xi, groups, offsets, zeta),
                               rtol=1e-10)


@pytest.mark.parametrize("groups,message", [([[0, 9]], "not one of"), ([[1, 1]], "twice"),
                                            ([["a"]], "column indices")])
def test_the_core_refuses_bad_groups(groups, message):
    xi = _sparse_xi(np.random.default_rng(2), 10, 3)
    with pytest.raises(ValueError, match=message):
        core_module().merged_entropy_change(xi, groups)
