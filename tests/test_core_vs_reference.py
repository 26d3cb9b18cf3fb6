"""The compiled core (nestedatoms._core and its AVX2 / AVX-512 builds) against the NumPy reference.

Every function of ``reference.py`` has a namesake in ``_core`` with the same arguments and the same
results (relative 1e-9; in practice ~1e-13).  Random states cover the edge shapes of a fit: p = 1,
L = 1, K = 1 (no free group sticks), groups of a single cell, several blocks of cells.  The cell step
must also be bitwise identical whatever the number of threads, and every malformed argument must be
refused with a ValueError that names it.
"""

import numpy as np
import pytest

from nestedatoms import reference as ref
from nestedatoms._backend import ISA_MODULES, available_isas, core_module

ISAS = available_isas()


@pytest.fixture(params=ISAS, scope="module")
def core(request):
    """Every instruction-set build of the core this CPU can run (baseline, AVX2, AVX-512)."""
    return core_module(request.param)


def test_every_isa_build_is_tested_here():
    # The builds this machine can run are all exercised by the tests of this file.
    import nestedatoms._core as baseline

    features = baseline.cpu_features()
    assert "baseline" in ISAS
    if features.get("avx512f") and features.get("avx512bw"):
        for isa in ISA_MODULES:  # a wheel built with the variants installs all three
            try:
                core_module(isa)
            except ImportError:
                pytest.skip(f"the {isa} build is not installed")
        assert ISAS == ["baseline", "avx2", "avx512"]

RTOL = 1e-9


def close(actual, desired, rtol=RTOL, scale=None):
    """assert_allclose with an absolute floor at 1e-12 of the values' scale (for values ~ 0).

    The scale defaults to the largest |desired|; sums that cancel (first moments about the mean)
    pass the scale of their terms instead.
    """
    desired = np.asarray(desired, dtype=float)
    if scale is None:
        scale = float(np.max(np.abs(desired))) if desired.size else 1.0
    np.testing.assert_allclose(actual, desired, rtol=rtol, atol=1e-12 * max(scale, 1.0))


# ------------------------------------------------------------------------------------------------
# Random states
# ------------------------------------------------------------------------------------------------
def random_spd(rng, G, D, scale=1.0):
    A = rng.normal(size=(G, D, D))
    S = A @ np.swapaxes(A, 1, 2) / D + 0.3 * np.eye(D)
    return np.ascontiguousarray(S * scale)


def random_atoms(rng, G, D, spread=1.0, shift=0.0):
    """NW factors (m, lam, W, nu) roughly matched to data of the given spread."""
    nu = D - 1.0 + rng.uniform(0.5, 60.0, size=G)
    W = random_spd(rng, G, D) / (nu[:, None, None] * spread**2)
    m = shift + spread * rng.normal(size=(G, D))
    lam = rng.uniform(0.01, 50.0, size=G)
    return m, lam, W, nu


def random_sticks(rng, G, C):
    a = 1.0 + rng.gamma(2.0, 20.0, size=(G - 1, C))
    b = rng.uniform(0.05, 3.0) + rng.gamma(2.0, 50.0, size=(G - 1, C))
    return a, b


def group_sizes(rng, J):
    sizes = rng.integers(1, 400, size=J)
    sizes[rng.integers(J)] = 1  # a group of a single cell
    return sizes


def random_cell_problem(seed, p, L, K, J):
    rng = np.random.default_rng(seed)
    sizes = group_sizes(rng, J)
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    N = int(offsets[-1])
    spread, shift = 10.0 ** rng.uniform(-2, 2), rng.normal(scale=5.0)
    Y = shift + spread * rng.normal(size=(N, p))
    m, lam, W, nu = random_atoms(rng, L, p, spread, shift)
    rho = rng.dirichlet(np.full(K, 0.5), size=J)
    a, b = random_sticks(rng, L, K)
    elog_omega = ref.expected_log_stick_weights(a, b)
    centre = Y.mean(axis=0)
    return dict(Y=Y, offsets=offsets, rho=rho, elog_omega=elog_omega, m=m, lam=lam, W=W, nu=nu,
                centre=centre)


SHAPES = [  # (p, L, K, J)
    (1, 1, 1, 1),
    (1, 4, 1, 3),
    (3, 1, 2, 4),
    (2, 5, 3, 7),
    (5, 7, 4, 12),
    (8, 3, 6, 5),
]


def run_cell_step(backend, prob, n_threads=1):
    N, L = prob["Y"].shape[0], prob["elog_omega"].shape[0]
    xi = np.full((N, L), np.nan)
    out = backend.cell_step(prob["Y"], prob["offsets"], prob["rho"], prob["elog_omega"],
                            prob["m"], prob["lam"], prob["W"], prob["nu"], prob["centre"], xi,
                            n_threads)
    return (xi,) + tuple(out)


# ------------------------------------------------------------------------------------------------
# The steps
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("shape", SHAPES)
def test_cell_step_matches_reference(core, shape, seed):
    prob = random_cell_problem(seed, *shape)
    got = run_cell_step(core, prob)
    want = run_cell_step(ref, prob)
    names = ["xi", "N_jl", "n", "s1", "s2", "entropy"]
    # s1 is a sum of centred terms that may cancel to ~0: compare on the scale of its terms
    s1_scale = float(np.abs(prob["Y"] - prob["centre"]).sum())
    for name, g, w in zip(names, got, want):
        assert np.shape(g) == np.shape(w), name
        close(g, w, scale=s1_scale if name == "s1" else None)
    assert isinstance(got[-1], float)
    # xi rows are distributions and the statistics are those of xi
    np.testing.assert_allclose(got[0].sum(axis=1), 1.0, rtol=1e-13)
    n, s1, s2 = ref.weighted_stats(prob["Y"], got[0], prob["centre"])
    close(got[2], n)
    close(got[3], s1, scale=s1_scale)
    close(got[4], s2)
    assert np.array_equal(got[4], np.swapaxes(got[4], 1, 2))  # exactly symmetric


@pytest.mark.parametrize("shape", [(1, 2, 1, 120), (4, 6, 3, 150)])
def test_cell_step_bitwise_identical_across_threads(core, shape):
    prob = random_cell_problem(7, *shape)
    # enough blocks of 256 cells that the core really starts 3 threads (it gives each thread
    # at least kMinBlocksPerThread = 16 blocks)
    assert prob["Y"].shape[0] > 3 * 16 * 256
    runs = [run_cell_step(core, prob, n_threads) for n_threads in (1, 2, 3, 7, 0)]
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            assert np.array_equal(a, b)


def test_cell_step_from_concurrent_python_threads(core):
    # The GIL is released during the step: concurrent calls must not interfere.
    from concurrent.futures import ThreadPoolExecutor

    probs = [random_cell_problem(s, 3, 4, 2, 6) for s in range(4)]
    serial = [run_cell_step(core, P) for P in probs]
    with ThreadPoolExecutor(max_workers=4) as pool:
        concurrent = list(pool.map(lambda P: run_cell_step(core, P, 2), probs))
    for a_run, b_run in zip(serial, concurrent):
        for a, b in zip(a_run, b_run):
            assert np.array_equal(a, b)


def test_cell_step_many_chunks_of_blocks(core):
    # More blocks than the chunk cap (1024 chunks): chunks then hold several blocks each, and the
    # fold over chunks keeps block order; groups straddle block and chunk boundaries.
    rng = np.random.default_rng(3)
    N, p, L, K = 300_000, 1, 2, 2
    assert N > 1024 * core.build_info()["cell_block"]
    offsets = np.array([0, 1, 7000, 7001, 150_000, N], dtype=np.int64)
    prob = dict(Y=rng.normal(size=(N, p)), offsets=offsets, rho=rng.dirichlet(np.ones(K), 5),
                elog_omega=ref.expected_log_stick_weights(*random_sticks(rng, L, K)),
                centre=np.zeros(p))
    prob.update(zip(["m", "lam", "W", "nu"], random_atoms(rng, L, p)))
    got1, got2, want = (run_cell_step(core, prob, 1), run_cell_step(core, prob, 2),
                        run_cell_step(ref, prob))
    for a, b, w in zip(got1, got2, want):
        assert np.array_equal(a, b)
        close(a, w)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cell_step_far_from_centre_and_sharp_atoms(core, seed):
    # The kernel expands (y - m)' W (y - m) about the data centre: data far from the origin, atoms
    # far from the centre and very sharp atoms must still agree with the direct form.
    rng = np.random.default_rng(seed)
    p, L, K, J = 6, 5, 2, 4
    prob = random_cell_problem(seed, p, L, K, J)
    shift = 1e4 * rng.normal(size=p)
    prob["Y"] = prob["Y"] * 0.01 + shift
    prob["centre"] = prob["Y"].mean(axis=0)
    picks = rng.integers(prob["Y"].shape[0], size=L)
    prob["m"] = prob["Y"][picks] + 0.01 * rng.normal(size=(L, p))
    prob["W"] = prob["W"] * 1e3
    got, want = run_cell_step(core, prob), run_cell_step(ref, prob)
    s1_scale = float(np.abs(prob["Y"] - prob["centre"]).sum())
    for name, g, w in zip(["xi", "N_jl", "n", "s1", "s2", "entropy"], got, want):
        close(g, w, scale=s1_scale if name == "s1" else None, rtol=1e-8)


def test_isa_builds_agree_with_each_other():
    # Same problem through every build: results agree to rounding (not bitwise: FMA and vector
    # widths change the last bits).
    prob = random_cell_problem(5, 30, 30, 4, 12)
    runs = [run_cell_step(core_module(isa), prob) for isa in ISAS]
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            close(b, a, rtol=1e-10)


def test_cell_step_accepts_empty_groups_and_int32_offsets(core):
    prob = random_cell_problem(4, 2, 3, 2, 3)
    sizes = np.diff(prob["offsets"])
    offsets = np.concatenate([[0, 0], np.cumsum(sizes)]).astype(np.int32)  # group 0 is empty
    prob4 = dict(prob, offsets=offsets, rho=np.vstack([[0.5, 0.5], prob["rho"]]))
    xi, N_jl, n, s1, s2, h = run_cell_step(core, prob4)
    want = run_cell_step(ref, prob)
    assert np.all(N_jl[0] == 0.0)
    close(N_jl[1:], want[1])
    close(xi, want[0])


@pytest.mark.parametrize("seed", range(4))
def test_group_step_matches_reference(core, seed):
    rng = np.random.default_rng(seed)
    J, L, K = rng.integers(1, 30), rng.integers(1, 8), rng.integers(1, 6)
    N_jl = rng.gamma(1.0, 100.0, size=(J, L))
    elog_pi = ref.expected_log_stick_weights(*random_sticks(rng, K, 1))[:, 0]
    elog_omega = ref.expected_log_stick_weights(*random_sticks(rng, L, K))
    ell_x = rng.normal(scale=30.0, size=(J, K)) if seed % 2 else np.zeros((J, K))
    rho_c, rho_r = np.full((J, K), np.nan), np.full((J, K), np.nan)
    h_c = core.group_step(N_jl, elog_pi, elog_omega, ell_x, rho_c)
    h_r = ref.group_step(N_jl, elog_pi, elog_omega, ell_x, rho_r)
    close(rho_c, rho_r)
    close(h_c, h_r)
    assert isinstance(h_c, float)


# ------------------------------------------------------------------------------------------------
# Sticks, concentrations, categorical entropy
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("G,C", [(1, 1), (1, 3), (2, 1), (6, 1), (7, 4)])
def test_stick_functions_match_reference(core, G, C):
    rng = np.random.default_rng(G * 10 + C)
    counts = rng.gamma(0.5, 200.0, size=(G, C))
    counts[rng.random(size=counts.shape) < 0.2] = 0.0
    conc = 0.37
    a_c, b_c = core.update_sticks(counts, conc)
    a_r, b_r = ref.update_sticks(counts, conc)
    assert a_c.shape == a_r.shape == (G - 1, C)
    close(a_c, a_r)
    close(b_c, b_r)
    # 1-D counts give 1-D sticks, as in the reference
    a1, b1 = core.update_sticks(counts[:, 0], conc)
    close(a1, ref.update_sticks(counts[:, 0], conc)[0])
    close(b1, ref.update_sticks(counts[:, 0], conc)[1])
    assert a1.shape == (G - 1,)

    e = core.expected_log_stick_weights(a_c, b_c)
    assert e.shape == (G, C)
    close(e, ref.expected_log_stick_weights(a_r, b_r))
    # exp(E log w) sums to at most 1 (Jensen) per process
    assert np.all(np.exp(e).sum(axis=0) <= 1.0 + 1e-12)

    shape_c, rate_c = core.update_concentration(0.1, 0.1, a_c, b_c)
    shape_r, rate_r = ref.update_concentration(0.1, 0.1, a_r, b_r)
    close(shape_c, shape_r)
    close(rate_c, rate_r)
    close(core.stick_prior_term(a_c, b_c, 1.3, -0.2), ref.stick_prior_term(a_r, b_r, 1.3, -0.2))
    close(core.beta_entropy(a_c, b_c), ref.beta_entropy(a_r, b_r))


def test_beta_entropy_large_parameters(core):
    # Stick parameters reach the number of cells; log B must not lose digits there.
    a = np.array([1.0, 2.5, 1e3, 1e5, 1e7, 3.0, 1e6, 12.0, 0.3])
    b = np.array([1.0, 7.0, 1e3, 2e5, 0.5, 1e6, 1e6, 9.0, 1e4])
    close(core.beta_entropy(a, b), ref.beta_entropy(a, b))
    for ai, bi in zip(a, b):
        close(core.beta_entropy(np.array([ai]), np.array([bi])),
              ref.beta_entropy(np.array([ai]), np.array([bi])))


def test_gamma_and_categorical_terms_match_reference(core):
    for shape, rate in [(0.1, 0.1), (3.0, 0.5), (250.0, 31.0), (1e6, 2e5)]:
        close(core.gamma_expectations(shape, rate), ref.gamma_expectations(shape, rate))
        close(core.gamma_prior_term(0.1, 0.1, shape, rate),
              ref.gamma_prior_term(0.1, 0.1, shape, rate))
        close(core.gamma_entropy(shape, rate), ref.gamma_entropy(shape, rate))
    rng = np.random.default_rng(0)
    r = rng.dirichlet(np.full(6, 0.3), size=50)
    r[3] = [1.0, 0, 0, 0, 0, 0]
    close(core.categorical_entropy(r), ref.categorical_entropy(r))
    close(core.categorical_entropy(r[:, 0]), ref.categorical_entropy(r[:, 0]))
    assert core.categorical_entropy(np.zeros((2, 3))) == 0.0


# ------------------------------------------------------------------------------------------------
# Normal-Wishart
# ------------------------------------------------------------------------------------------------
# D = 50 and 70: either side of the core's switch from its unblocked Cholesky loop to Eigen's
# blocked one (kUnblockedCholesky = 64)
@pytest.mark.parametrize("D,G", [(1, 1), (1, 4), (3, 2), (6, 5), (50, 3), (70, 2)])
def test_normal_wishart_functions_match_reference(core, D, G):
    rng = np.random.default_rng(D * 100 + G)
    m, lam, W, nu = random_atoms(rng, G, D, spread=3.0, shift=2.0)
    close(core.expected_logdet(W, nu), ref.expected_logdet(W, nu))
    close(core.log_wishart_norm(W, nu), ref.log_wishart_norm(W, nu))
    Z = 2.0 + 3.0 * rng.normal(size=(700, D))
    close(core.expected_loglik(Z, m, lam, W, nu), ref.expected_loglik(Z, m, lam, W, nu))

    w = rng.dirichlet(np.ones(G), size=700)
    centre = Z.mean(axis=0)
    stats_c = core.weighted_stats(Z, w, centre)
    stats_r = ref.weighted_stats(Z, w, centre)
    for c_, r_ in zip(stats_c, stats_r):
        close(c_, r_, scale=float(np.abs(Z - centre).sum()))

    m0 = centre + rng.normal(size=D)
    lam0, nu0 = 0.01, D + 5.0
    W0inv = random_spd(rng, 1, D, scale=9.0)[0]
    n, s1, s2 = stats_r
    n = n.copy()
    n[0] = 0.0  # an empty atom gets exactly the prior
    post_c = core.nw_posterior(n, s1, s2, centre, m0, lam0, W0inv, nu0)
    post_r = ref.nw_posterior(n, s1, s2, centre, m0, lam0, W0inv, nu0)
    for c_, r_ in zip(post_c, post_r):
        close(c_, r_)
    mc, lamc, Wc, nuc = post_c
    assert np.array_equal(mc[0], m0) and lamc[0] == lam0 and nuc[0] == nu0
    close(Wc[0], np.linalg.inv(W0inv))
    assert np.array_equal(Wc, np.swapaxes(Wc, 1, 2))

    close(core.nw_loglik_from_stats(n, s1, s2, centre, m, lam, W, nu),
          ref.nw_loglik_from_stats(n, s1, s2, centre, m, lam, W, nu))
    close(core.nw_prior_term(m, lam, W, nu, m0, lam0, W0inv, nu0),
          ref.nw_prior_term(m, lam, W, nu, m0, lam0, W0inv, nu0))
    close(core.nw_entropy(m, lam, W, nu), ref.nw_entropy(m, lam, W, nu))


@pytest.mark.parametrize("D", [3, 50, 70])
@pytest.mark.parametrize("where", ["diagonal", "last", "nan"])
def test_a_matrix_that_is_not_positive_definite_is_refused_by_both_factorisations(core, D, where):
    rng = np.random.default_rng(D)
    W = random_spd(rng, 2, D, scale=1.0)
    if where == "diagonal":
        W[1, 0, 0] = -1.0                      # fails at the first column
    elif where == "last":
        W[1] -= 2.0 * np.linalg.eigvalsh(W[1])[-1] * np.outer(np.ones(D), np.ones(D)) / D
    else:
        W[1, D - 1, 0] = W[1, 0, D - 1] = np.nan
    with pytest.raises(ValueError, match=r"W\[1\] is not symmetric positive definite"):
        core.expected_logdet(W, np.full(2, D + 2.0))


def test_inputs_are_not_copied_or_modified(core):
    rng = np.random.default_rng(1)
    prob = random_cell_problem(1, 2, 3, 2, 4)
    before = {k: v.copy() for k, v in prob.items()}
    run_cell_step(core, prob)
    for k in prob:
        assert np.array_equal(prob[k], before[k]), k
    # non-contiguous or integer inputs are converted, not refused
    m, lam, W, nu = random_atoms(rng, 3, 2)
    Zf = np.asfortranarray(rng.normal(size=(50, 2)))
    close(core.expected_loglik(Zf, m, lam, W, nu), ref.expected_loglik(Zf, m, lam, W, nu))
    close(core.expected_loglik(Zf[::2], m, lam, W, nu),
          ref.expected_loglik(Zf[::2], m, lam, W, nu))
    close(core.digamma(np.arange(1, 5)), ref.digamma(np.arange(1, 5)))


# ------------------------------------------------------------------------------------------------
# Refusals
# ------------------------------------------------------------------------------------------------
def cell_args(prob, **override):
    N, L = prob["Y"].shape[0], prob["elog_omega"].shape[0]
    args = dict(prob, xi_out=np.empty((N, L)))
    args.update(override)
    order = ["Y", "offsets", "rho", "elog_omega", "m", "lam", "W", "nu", "centre", "xi_out"]
    return [args[k] for k in order]


@pytest.fixture
def small_prob():
    return random_cell_problem(11, 3, 4, 2, 5)


@pytest.mark.parametrize("name,make,match", [
    ("Y", lambda P: P["Y"][:, :2], "m must have shape"),
    ("Y", lambda P: P["Y"][:, 0], "Y must be 2-D"),
    ("offsets", lambda P: P["offsets"][:-1], "offsets"),
    ("offsets", lambda P: P["offsets"][::-1].copy(), "offsets"),
    ("offsets", lambda P: P["offsets"].astype(float), "offsets must have an integer dtype"),
    ("rho", lambda P: P["rho"][:-1], "rho must have shape"),
    ("rho", lambda P: P["rho"][:, :1], "elog_omega must have shape"),
    ("elog_omega", lambda P: P["elog_omega"][:, :1], "elog_omega must have shape"),
    ("m", lambda P: P["m"][:-1], "m must have shape"),
    ("lam", lambda P: P["lam"][:-1], "lam must have shape"),
    ("W", lambda P: P["W"][:, :2, :2], "W must have shape"),
    ("W", lambda P: P["W"][0], "W must be 3-D"),
    ("nu", lambda P: P["nu"][:-1], "nu must have shape"),
    ("nu", lambda P: np.full_like(P["nu"], 1.5), "nu\\[0\\] must exceed"),
    ("lam", lambda P: -P["lam"], "lam\\[0\\] must be positive"),
    ("W", lambda P: -P["W"], "positive definite"),
    ("centre", lambda P: P["centre"][:2], "centre must have shape"),
    ("xi_out", lambda P: np.empty((P["Y"].shape[0], 3)), "xi_out must have shape"),
    ("xi_out", lambda P: np.empty((P["Y"].shape[0], 4), order="F"), "C-contiguous"),
    ("xi_out", lambda P: np.empty((P["Y"].shape[0], 8))[:, ::2], "C-contiguous"),
    ("xi_out", lambda P: np.empty((P["Y"].shape[0], 4), dtype=np.float32), "float64"),
    ("xi_out", lambda P: np.empty((P["Y"].shape[0], 4)).tolist(), "numpy.ndarray"),
    ("xi_out", lambda P: P["W"], "xi_out must have shape"),
    ("Y", lambda P: np.array([["a", "b", "c"]]), "Y must be convertible"),
])
def test_cell_step_refuses_bad_arguments(core, small_prob, name, make, match):
    args = cell_args(small_prob, **{name: make(small_prob)})
    with pytest.raises(ValueError, match=match):
        core.cell_step(*args)


def test_cell_step_refuses_readonly_or_aliased_output(core, small_prob):
    xi = np.empty((small_prob["Y"].shape[0], 4))
    xi.setflags(write=False)
    with pytest.raises(ValueError, match="writeable"):
        core.cell_step(*cell_args(small_prob, xi_out=xi))
    # xi_out sharing memory with an input
    N = small_prob["Y"].shape[0]
    buf = np.zeros((N, 4))
    Y = buf[:, :3].copy()
    with pytest.raises(ValueError, match="share memory"):
        core.cell_step(*cell_args(dict(small_prob, Y=buf), xi_out=buf,
                                  m=np.zeros((4, 4)), W=np.tile(np.eye(4), (4, 1, 1)),
                                  centre=np.zeros(4)))
    del Y


def test_group_step_refuses_bad_arguments(core):
    J, L, K = 4, 3, 2
    good = dict(N_jl=np.ones((J, L)), elog_pi=np.zeros(K), elog_omega=np.zeros((L, K)),
                ell_x=np.zeros((J, K)), rho_out=np.empty((J, K)))
    order = ["N_jl", "elog_pi", "elog_omega", "ell_x", "rho_out"]
    assert np.isfinite(core.group_step(*[good[k] for k in order]))
    bad = [("N_jl", np.ones((J, L + 1)), "elog_omega must have shape"),
           ("elog_pi", np.zeros(K + 1), "elog_omega must have shape"),
           ("ell_x", np.zeros((J + 1, K)), "ell_x must have shape"),
           ("rho_out", np.empty((J, K + 1)), "rho_out must have shape"),
           ("rho_out", np.empty((J, K), order="F"), "C-contiguous"),
           ("rho_out", np.empty((J, K), dtype=np.float32), "float64"),
           ("rho_out", good["N_jl"][:, :K].copy(), None)]
    for name, value, match in bad[:-1]:
        args = dict(good, **{name: value})
        with pytest.raises(ValueError, match=match):
            core.group_step(*[args[k] for k in order])
    no_k = dict(elog_pi=np.zeros(0), elog_omega=np.zeros((L, 0)), ell_x=np.zeros((J, 0)),
                rho_out=np.empty((J, 0)))
    with pytest.raises(ValueError, match="K must be at least 1"):
        core.group_step(*[dict(good, **no_k)[k] for k in order])
    ro = np.empty((J, K))
    ro.setflags(write=False)
    with pytest.raises(ValueError, match="writeable"):
        core.group_step(*[dict(good, rho_out=ro)[k] for k in order])


def test_other_functions_refuse_bad_shapes(core):
    rng = np.random.default_rng(0)
    m, lam, W, nu = random_atoms(rng, 3, 2)
    with pytest.raises(ValueError, match="nu must have shape"):
        core.expected_logdet(W, nu[:2])
    with pytest.raises(ValueError, match="W must be 3-D"):
        core.log_wishart_norm(W[0], nu)
    with pytest.raises(ValueError, match="m must have shape"):
        core.expected_loglik(np.zeros((5, 3)), m, lam, W, nu)
    with pytest.raises(ValueError, match="w must have shape"):
        core.weighted_stats(np.zeros((5, 2)), np.zeros((4, 3)), np.zeros(2))
    with pytest.raises(ValueError, match="centre must have shape"):
        core.weighted_stats(np.zeros((5, 2)), np.zeros((5, 3)), np.zeros(3))
    n, s1, s2 = np.ones(3), np.zeros((3, 2)), np.tile(np.eye(2), (3, 1, 1))
    with pytest.raises(ValueError, match="s2 must have shape"):
        core.nw_posterior(n, s1, s2[:, :1], np.zeros(2), np.zeros(2), 0.01, np.eye(2), 7.0)
    with pytest.raises(ValueError, match="W0inv must have shape"):
        core.nw_posterior(n, s1, s2, np.zeros(2), np.zeros(2), 0.01, np.eye(3), 7.0)
    with pytest.raises(ValueError, match="W0inv is not symmetric positive definite"):
        core.nw_posterior(n, s1, s2, np.zeros(2), np.zeros(2), 0.01, -np.eye(2), 7.0)
    with pytest.raises(ValueError, match="nu0 must exceed"):
        core.nw_posterior(n, s1, s2, np.zeros(2), np.zeros(2), 0.01, np.eye(2), 0.5)
    with pytest.raises(ValueError, match="m0 must have shape"):
        core.nw_prior_term(m, lam, W, nu, np.zeros(3), 0.01, np.eye(2), 7.0)
    with pytest.raises(ValueError, match="lam must have shape"):
        core.nw_entropy(m, lam[:1], W, nu)
    with pytest.raises(ValueError, match="s1 must have shape"):
        core.nw_loglik_from_stats(n[:2], s1, s2, np.zeros(2), m, lam, W, nu)
    with pytest.raises(ValueError, match="b must have shape"):
        core.expected_log_stick_weights(np.ones((2, 3)), np.ones((2, 2)))
    with pytest.raises(ValueError, match="b must have the same shape as a"):
        core.beta_entropy(np.ones(3), np.ones(4))
    with pytest.raises(ValueError, match="b must have the same shape as a"):
        core.update_concentration(0.1, 0.1, np.ones(3), np.ones(4))
    with pytest.raises(ValueError, match="counts"):
        core.update_sticks(np.ones((0, 2)), 1.0)
    with pytest.raises(ValueError, match="counts"):
        core.update_sticks(np.ones((2, 2, 2)), 1.0)


def test_build_flags(core):
    info = core.build_info()
    assert {"compiler", "eigen_version", "openmp", "simd"} <= set(info)
    assert info["eigen_version"].startswith("3.4")
    assert info["openmp"] == core.openmp_enabled()
    assert core.max_threads() >= 1
    assert core.NAME == "cpp"
    # each build really uses the instructions it is named after
    flags = set(info["simd_flags"])
    assert info["isa"] == core.ISA
    if core.ISA == "avx512":
        assert {"AVX512", "AVX2", "FMA"} <= flags
    elif core.ISA == "avx2":
        assert {"AVX2", "FMA"} <= flags and "AVX512" not in flags
    else:
        assert not {"AVX", "AVX2", "AVX512"} & flags or info["native"]
    # every reference function has a namesake in the core (tests/test_backend.py checks the
    # argument names against the Backend protocol)
    public = {n for n in dir(ref) if callable(getattr(ref, n)) and not n.startswith("_")
              and getattr(getattr(ref, n), "__module__", "") == ref.__name__}
    assert not {n for n in public if not hasattr(core, n)}


def test_cell_step_bitwise_identical_whatever_the_alignment_of_xi_out(core):
    # numpy only guarantees 8-byte alignment of a view; vector code must not change the last bits
    # with the address of xi_out (bitwise reproducible fits, SPEC 7).
    prob = random_cell_problem(2, 5, 7, 3, 20)
    N, L = prob["Y"].shape[0], 7
    runs = []
    for shift in range(8):
        buf = np.empty(N * L + 8)
        xi = buf[shift:shift + N * L].reshape(N, L)
        out = core.cell_step(prob["Y"], prob["offsets"], prob["rho"], prob["elog_omega"],
                             prob["m"], prob["lam"], prob["W"], prob["nu"], prob["centre"], xi, 2)
        runs.append((xi.copy(),) + tuple(out))
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            assert np.array_equal(a, b)


def test_cell_step_cuts_negligible_responsibilities_and_restores_the_fp_mode(core):
    # Well-separated atoms make most responsibilities astronomically small; the core sets those
    # below exp(-600) of a cell's largest to exactly 0 (they would be subnormal numbers, which
    # slow x86 arithmetic ~100x) and agrees with the reference everywhere else.
    rng = np.random.default_rng(8)
    p, L, J = 3, 4, 5
    prob = random_cell_problem(8, p, L, 2, J)
    prob["m"] = rng.normal(scale=1.0, size=(L, p))
    prob["Y"] = prob["m"][rng.integers(L, size=prob["Y"].shape[0])] + 0.05 * rng.normal(
        size=prob["Y"].shape)
    prob["nu"] = np.full(L, p + 2.0)
    prob["centre"] = prob["Y"].mean(axis=0)
    for scale in np.geomspace(10.0, 1e4, 40):  # the precision at which some land in the gap
        prob["W"] = np.tile(np.eye(p) * scale, (L, 1, 1))
        want = run_cell_step(ref, prob)
        tiny = want[0] < np.exp(-600.0) * want[0].max(axis=1, keepdims=True)
        if (want[0][tiny] > 0).sum() > 20:  # the reference keeps them
            break
    else:
        raise AssertionError("no precision puts responsibilities between 0 and exp(-600)")
    got = run_cell_step(core, prob)
    assert np.all(got[0][tiny] == 0.0)
    for g, w in zip(got, want):
        close(g, w)
    # the caller's floating-point mode is restored: subnormals still exist afterwards
    assert np.float64(1e-300) * np.float64(1e-10) > 0.0
