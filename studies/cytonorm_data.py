"""Load the real CyTOF data that the ``cytonormpy`` wheel ships, and gate it by hand.

``cytonormpy`` (CytoNorm for python, PyPI) installs, under ``cytonormpy/_resources``, six
whole-blood mass-cytometry (CyTOF) files of the CytoNorm paper's validation design (Van Gassen
et al., Cytometry A 2020): three batches (barcoded plates ``PTLG021``, ``PTLG028``,
``PTLG034``), each holding the same two shared control samples (``Control_1``, used by CytoNorm
as the reference, and ``Control_2``), unstimulated, 1000 events each, 55 channels, together
with ``test_adata.h5ad``, an AnnData of exactly these 6000 events (raw values in
``layers["compensated"]``, checked identical to the FCS files).  Nothing is downloaded.

The files carry no cell-type annotation (cytonormpy's own example labels are random draws), so
:func:`gate` assigns the major blood lineages by a fixed hand-written gating tree on the
arcsinh(x/5)-transformed lineage markers, thresholds read off the valleys of the pooled
histograms.  It is an independent reference for the clusters, not ground truth.

Only the file path is looked up (``importlib.util.find_spec``): ``cytonormpy`` itself is never
imported (its import pulls in flowsom, pytometry and scanpy and takes half a minute), so the
loader needs only anndata, a dependency of nestedatoms.
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pandas as pd

# Surface lineage markers of the panel (the PnS names).  Left out: the barcodes (BC1-6), DNA,
# beads, Time/Event_length, the signalling read-outs (pCREB, pSTAT1/3/5, p38, pS6, MAPKAPK2,
# IkB, NFkB, ERK), transcription factors (Tbet, FoxP3), CXCR3/CCR9, CD235ab_CD61 (an exclusion
# channel, 92 % zeros) and two channels that do not separate any population here: CD19
# (95 % of all events above arcsinh 3.7, B cells no higher than neutrophils) and CD25 (a
# single broad mode at 2.5 on every lineage).
LINEAGE = ["CD45", "CD66", "CD15", "CD16", "CD11b", "CD14", "CD33", "CD11c", "CD123", "HLADR",
           "CD3", "CD4", "CD8a", "TCRgd", "CD7", "CD56", "CD161", "CD45RA", "CCR7", "CCR2"]

# Major lineages (for a coarse comparison) of each gate.
LINEAGE_OF_GATE = {
    "Granulocytes": "Granulocytes", "CD4 T": "T cells", "CD8 T": "T cells",
    "gd T": "T cells", "other T": "T cells", "Monocytes": "Monocytes", "B cells": "B cells",
    "NK cells": "NK cells", "pDC": "DCs", "mDC": "DCs", "ungated": "ungated",
}


def resources_dir() -> str:
    """The folder of cytonormpy's packaged example data; ImportError if it is not installed."""
    spec = importlib.util.find_spec("cytonormpy")
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        resources = os.path.join(folder, "_resources")
        if os.path.isfile(os.path.join(resources, "test_adata.h5ad")):
            return resources
    raise ImportError("the real-data example needs cytonormpy: pip install cytonormpy")


def gate(A: pd.DataFrame) -> np.ndarray:
    """Hand gating of arcsinh(x/5) values (columns named by marker) into major blood lineages."""
    def g(name):
        return A[name].to_numpy()

    lab = np.full(len(A), "ungated", dtype=object)
    T = g("CD3") > 2.5
    lab[T] = "other T"
    lab[T & (g("CD4") > 2) & (g("CD8a") < 2.5)] = "CD4 T"
    lab[T & (g("CD8a") > 2.5) & (g("CD4") < 2)] = "CD8 T"
    lab[T & (g("TCRgd") > 2)] = "gd T"
    rest = ~T
    gran = rest & (g("CD66") > 1.75) & (g("CD15") > 1.75)
    lab[gran] = "Granulocytes"
    rest &= ~gran
    mono = rest & (g("CD14") > 1.5)
    lab[mono] = "Monocytes"
    rest &= ~mono
    pdc = rest & (g("CD123") > 2) & (g("HLADR") > 2)
    lab[pdc] = "pDC"
    rest &= ~pdc
    b = rest & (g("HLADR") > 3) & (g("CD11c") < 2)
    lab[b] = "B cells"
    rest &= ~b
    nk = rest & ((g("CD56") > 1.5) | ((g("CD16") > 2) & (g("CD7") > 1.5)))
    lab[nk] = "NK cells"
    rest &= ~nk
    lab[rest & (g("HLADR") > 3) & (g("CD11c") > 1.5)] = "mDC"
    return lab


def load(markers=LINEAGE, cofactor=5.0):
    """The six samples as an AnnData.

    ``X``: arcsinh(x / cofactor) of ``markers`` (cells x markers, float64), also in
    ``obsm["X_lineage"]``; ``layers["raw"]``: the untransformed values.  ``obs``: ``sample``
    (e.g. "PTLG021_Control_1"), ``batch`` (the plate, "PTLG021"), ``control`` ("Control_1" /
    "Control_2"), ``gate`` and ``lineage`` (from :func:`gate`, on the lineage markers whatever
    ``markers`` is).
    """
    import anndata as ad

    src = ad.read_h5ad(os.path.join(resources_dir(), "test_adata.h5ad"))
    names = [p if p else c for p, c in zip(src.var["pns"].astype(str), src.var_names)]
    raw = pd.DataFrame(np.asarray(src.layers["compensated"], dtype=np.float64), columns=names)
    A = np.arcsinh(raw / cofactor)
    files = src.obs["file_name"].astype(str).str.replace(".fcs", "", regex=False)
    parts = files.str.split("_")        # Gates, PTLG021, Unstim, Control, 1
    obs = pd.DataFrame({
        "sample": (parts.str[1] + "_" + parts.str[3] + "_" + parts.str[4]).to_numpy(),
        "batch": parts.str[1].to_numpy(),
        "control": (parts.str[3] + "_" + parts.str[4]).to_numpy(),
    }, index=[f"cell{i}" for i in range(len(raw))])
    obs["gate"] = pd.Categorical(gate(A))
    obs["lineage"] = pd.Categorical(obs["gate"].map(LINEAGE_OF_GATE).to_numpy())
    for col in ("sample", "batch", "control"):
        obs[col] = pd.Categorical(obs[col])
    adata = ad.AnnData(X=np.ascontiguousarray(A[list(markers)].to_numpy()), obs=obs,
                       var=pd.DataFrame(index=list(markers)))
    adata.layers["raw"] = np.ascontiguousarray(raw[list(markers)].to_numpy())
    adata.obsm["X_lineage"] = adata.X.copy()
    return adata
