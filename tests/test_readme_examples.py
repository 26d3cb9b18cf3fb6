"""The README's Python examples run as written, in order, in one namespace (a reader pastes
them one after the other), and do what the comments beside them say."""

import os
import re

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def readme_blocks():
    with open(os.path.join(ROOT, "README.md")) as fh:
        return re.findall(r"```python\n(.*?)```", fh.read(), re.S)


def test_the_readme_has_its_examples():
    blocks = readme_blocks()
    assert len(blocks) >= 3
    assert blocks[0].count("\n") <= 6          # the first screen's example stays short


def test_the_readme_examples_run():
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    namespace = {}
    for block in readme_blocks():
        exec(compile(block, "README.md", "exec"), namespace)
    adata, model, table = namespace["adata"], namespace["model"], namespace["table"]
    # the first example's clusters were written; the AnnData example refitted under "nam"
    assert {"nam_group_cluster", "nam_cell_cluster", "mapped_group_cluster"} <= set(adata.obs)
    assert adata.obsm["nam_cell_probs"].shape[0] == adata.n_obs
    # every donor mapped onto the model keeps the cluster it was fitted in
    np.testing.assert_array_equal(adata.obs["mapped_group_cluster"].astype(str),
                                  adata.obs["nam_group_cluster"].astype(str))
    assert {"difference", "lower", "upper"} <= set(table.columns)
    assert model.converged_
