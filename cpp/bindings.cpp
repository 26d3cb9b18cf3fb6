// Python bindings of the core: argument conversion, shape checks, GIL release.  No maths here.
//
// Conventions (the contract is python/nestedatoms/reference.py, function by function):
// * Read-only inputs are converted with forcecast + c_style, which is a no-op (no copy) for
//   float64 C-contiguous arrays, the layout the data layer hands over.
// * Output arrays passed in (xi_out, rho_out) are written in place and never copied: anything that
//   is not a writeable, aligned, C-contiguous, native float64 array of the right shape is refused.
// * Every shape is checked here; every failure is std::invalid_argument, i.e. ValueError, naming
//   the argument and the expected shape.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <Eigen/Core>
#include <cmath>
#include <cstdint>
#include <functional>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "cell_step.hpp"
#include "common.hpp"
#include "elbo_terms.hpp"
#include "group_ascent.hpp"
#include "merge_entropy.hpp"
#include "group_step.hpp"
#include "normal_gamma.hpp"
#include "normal_wishart.hpp"
#include "parallel.hpp"
#include "special.hpp"
#include "sticks.hpp"

// The same sources build one extension module per instruction set (see CMakeLists.txt); each
// gets its own module name and reports the instruction set it was compiled for.
#ifndef NESTEDATOMS_MODULE_NAME
#define NESTEDATOMS_MODULE_NAME _core
#endif
#ifndef NESTEDATOMS_ISA
#define NESTEDATOMS_ISA "baseline"
#endif

namespace py = pybind11;
using nam::fail;
using nam::Index;

namespace {

using Arr = py::array_t<double, py::array::c_style | py::array::forcecast>;

std::string shape_str(const py::array& a) {
    std::ostringstream s;
    s << "(";
    for (py::ssize_t d = 0; d < a.ndim(); ++d) s << (d ? ", " : "") << a.shape(d);
    if (a.ndim() == 1) s << ",";
    s << ")";
    return s.str();
}

std::string join(const std::vector<std::string>& parts) {
    std::string out = "(";
    for (size_t i = 0; i < parts.size(); ++i) out += (i ? ", " : "") + parts[i];
    if (parts.size() == 1) out += ",";
    return out + ")";
}

Arr as_array(const py::handle& obj, const std::string& name) {
    Arr arr = Arr::ensure(obj);
    if (!arr) fail(name + " must be convertible to a float64 array");
    return arr;
}

// Symbolic shape checker: the first array that mentions a dimension fixes it, later arrays must
// agree.  Messages spell the expected shape both symbolically and numerically.
class Shapes {
  public:
    void check(const py::array& a, const std::string& name, const std::vector<std::string>& dims) {
        const std::string want = join(dims);
        if (a.ndim() != static_cast<py::ssize_t>(dims.size()))
            fail(name + " must be " + std::to_string(dims.size()) + "-D with shape " + want +
                 ", got shape " + shape_str(a));
        for (size_t d = 0; d < dims.size(); ++d) {
            auto it = known_.find(dims[d]);
            if (it == known_.end()) {
                known_[dims[d]] = a.shape(d);
            } else if (it->second != a.shape(d)) {
                fail(name + " must have shape " + want + " = " + numeric(dims) + ", got " +
                     shape_str(a));
            }
        }
    }
    void define(const std::string& dim, Index value) { known_[dim] = value; }
    Index operator[](const std::string& dim) const { return known_.at(dim); }
    void at_least(const std::string& dim, Index minimum, const std::string& name) const {
        if (known_.at(dim) < minimum)
            fail(name + ": dimension " + dim + " must be at least " + std::to_string(minimum) +
                 ", got " + std::to_string(known_.at(dim)));
    }

  private:
    std::string numeric(const std::vector<std::string>& dims) const {
        std::vector<std::string> parts;
        for (const auto& d : dims) {
            auto it = known_.find(d);
            parts.push_back(it == known_.end() ? d : std::to_string(it->second));
        }
        return join(parts);
    }
    std::map<std::string, Index> known_;
};

void same_shape(const py::array& a, const py::array& b, const std::string& na,
                const std::string& nb) {
    bool same = a.ndim() == b.ndim();
    for (py::ssize_t d = 0; same && d < a.ndim(); ++d) same = a.shape(d) == b.shape(d);
    if (!same)
        fail(nb + " must have the same shape as " + na + " " + shape_str(a) + ", got " +
             shape_str(b));
}

const double* ptr(const Arr& a) { return a.data(); }

bool overlaps(const py::array& a, const py::array& b) {
    if (a.nbytes() == 0 || b.nbytes() == 0) return false;
    const char* a0 = static_cast<const char*>(a.data());
    const char* b0 = static_cast<const char*>(b.data());
    return a0 < b0 + b.nbytes() && b0 < a0 + a.nbytes();
}

// An output buffer must be written where the caller will read it: refuse anything that would
// need a converted copy.
py::array_t<double> out_array(const py::handle& obj, const std::string& name,
                              const std::vector<Index>& shape, const std::string& symbolic) {
    if (!py::isinstance<py::array>(obj)) fail(name + " must be a numpy.ndarray (written in place)");
    py::array a = py::reinterpret_borrow<py::array>(obj);
    if (!a.dtype().is(py::dtype::of<double>()) && !a.dtype().equal(py::dtype::of<double>()))
        fail(name + " must have dtype float64 (native byte order), got " +
             std::string(py::str(a.dtype())));
    if (!(a.flags() & py::array::c_style)) fail(name + " must be C-contiguous");
    if (!a.writeable()) fail(name + " must be writeable");
    if (reinterpret_cast<std::uintptr_t>(a.data()) % alignof(double) != 0)
        fail(name + " must be aligned");
    bool ok = a.ndim() == static_cast<py::ssize_t>(shape.size());
    for (size_t d = 0; ok && d < shape.size(); ++d) ok = a.shape(d) == shape[d];
    if (!ok) {
        std::vector<std::string> parts;
        for (Index s : shape) parts.push_back(std::to_string(s));
        fail(name + " must have shape " + symbolic + " = " + join(parts) + ", got " +
             shape_str(a));
    }
    return py::reinterpret_borrow<py::array_t<double>>(a);
}

template <class... Dims>
py::array_t<double> new_array(Dims... dims) {
    return py::array_t<double>(std::vector<py::ssize_t>{static_cast<py::ssize_t>(dims)...});
}

// ---- special functions --------------------------------------------------------------------

template <double (*F)(double)>
py::object elementwise(const py::object& x, const char* name) {
    if (py::isinstance<py::float_>(x) || (py::isinstance<py::int_>(x) && !py::isinstance<py::bool_>(x)))
        return py::float_(F(x.cast<double>()));
    Arr a = as_array(x, name);
    py::array_t<double> out(std::vector<py::ssize_t>(a.shape(), a.shape() + a.ndim()));
    const double* in = a.data();
    double* o = out.mutable_data();
    const py::ssize_t n = a.size();
    {
        py::gil_scoped_release release;
        for (py::ssize_t i = 0; i < n; ++i) o[i] = F(in[i]);
    }
    return std::move(out);
}

double digamma_scalar(double x) { return nam::digamma(x); }
double lgamma_scalar(double x) { return nam::lgamma(x); }

// ---- sticks -------------------------------------------------------------------------------

py::array_t<double> expected_log_stick_weights(const py::object& a_obj, const py::object& b_obj) {
    Arr a = as_array(a_obj, "a"), b = as_array(b_obj, "b");
    Shapes s;
    s.check(a, "a", {"G-1", "C"});
    s.check(b, "b", {"G-1", "C"});
    const Index n_free = s["G-1"], C = s["C"];
    auto out = new_array(n_free + 1, C);
    nam::expected_log_stick_weights(ptr(a), ptr(b), n_free, C, out.mutable_data());
    return out;
}

py::tuple update_sticks(const py::object& counts_obj, double concentration) {
    Arr counts = as_array(counts_obj, "counts");
    if (counts.ndim() != 1 && counts.ndim() != 2)
        fail("counts must be 1-D (G,) or 2-D (G, C), got shape " + shape_str(counts));
    const Index G = counts.shape(0), C = counts.ndim() == 2 ? counts.shape(1) : 1;
    if (G < 1) fail("counts must have at least one row (G >= 1), got shape " + shape_str(counts));
    py::array_t<double> a, b;
    if (counts.ndim() == 2) {
        a = new_array(G - 1, C);
        b = new_array(G - 1, C);
    } else {
        a = new_array(G - 1);
        b = new_array(G - 1);
    }
    nam::update_sticks(ptr(counts), G, C, concentration, a.mutable_data(), b.mutable_data());
    return py::make_tuple(a, b);
}

py::tuple update_concentration(double prior_shape, double prior_rate, const py::object& a_obj,
                               const py::object& b_obj) {
    Arr a = as_array(a_obj, "a"), b = as_array(b_obj, "b");
    same_shape(a, b, "a", "b");
    const auto r = nam::update_concentration(prior_shape, prior_rate, ptr(a), ptr(b), a.size());
    return py::make_tuple(r.first, r.second);
}

double stick_prior_term(const py::object& a_obj, const py::object& b_obj, double e_conc,
                        double elog_conc) {
    Arr a = as_array(a_obj, "a"), b = as_array(b_obj, "b");
    same_shape(a, b, "a", "b");
    return nam::stick_prior_term(ptr(a), ptr(b), a.size(), e_conc, elog_conc);
}

double beta_entropy(const py::object& a_obj, const py::object& b_obj) {
    Arr a = as_array(a_obj, "a"), b = as_array(b_obj, "b");
    same_shape(a, b, "a", "b");
    return nam::beta_entropy(ptr(a), ptr(b), a.size());
}

double categorical_entropy(const py::object& r_obj) {
    Arr r = as_array(r_obj, "r");
    const double* p = ptr(r);
    const Index n = r.size();
    py::gil_scoped_release release;
    return nam::categorical_entropy(p, n);
}

// ---- Normal-Wishart -----------------------------------------------------------------------

// Holds the converted arrays of an NW factor so the view's pointers stay valid.
struct NWArrays {
    Arr m, lam, W, nu;
    nam::NWView view() const { return {m.data(), lam.data(), W.data(), nu.data(), G, D}; }
    Index G = 0, D = 0;
};

// The atoms' factors; `diagonal`: W (G, D) holds the diagonals (Normal-Gamma atoms).
NWArrays atom_arrays(const py::object& m, const py::object& lam, const py::object& W,
                     const py::object& nu, Shapes& s, const std::string& G, const std::string& D,
                     bool diagonal = false) {
    NWArrays q{as_array(m, "m"), as_array(lam, "lam"), as_array(W, "W"), as_array(nu, "nu")};
    s.check(q.m, "m", {G, D});
    s.check(q.lam, "lam", {G});
    if (diagonal)
        s.check(q.W, "W", {G, D});
    else
        s.check(q.W, "W", {G, D, D});
    s.check(q.nu, "nu", {G});
    s.at_least(D, 1, "m");
    q.G = s[G];
    q.D = s[D];
    return q;
}

// W (G, D, D) and nu (G,) only.
NWArrays wishart_arrays(const py::object& W, const py::object& nu, Shapes& s) {
    NWArrays q;
    q.W = as_array(W, "W");
    q.nu = as_array(nu, "nu");
    s.check(q.W, "W", {"G", "D", "D"});
    s.check(q.nu, "nu", {"G"});
    s.at_least("D", 1, "W");
    q.G = s["G"];
    q.D = s["D"];
    return q;
}

struct PriorArrays {
    Arr m0, W0inv;
    double lam0, nu0;
    nam::NWPrior prior(Index D) const { return {m0.data(), lam0, W0inv.data(), nu0, D}; }
    nam::DiagPrior diag_prior(Index D) const {
        return {m0.data(), lam0, W0inv.data(), nu0, D};
    }
};

// `diagonal`: W0inv (D,) is the diagonal (Normal-Gamma atoms).
PriorArrays prior_arrays(const py::object& m0, double lam0, const py::object& W0inv, double nu0,
                         Shapes& s, bool diagonal = false) {
    PriorArrays p{as_array(m0, "m0"), as_array(W0inv, "W0inv"), lam0, nu0};
    s.check(p.m0, "m0", {"D"});
    if (diagonal)
        s.check(p.W0inv, "W0inv", {"D"});
    else
        s.check(p.W0inv, "W0inv", {"D", "D"});
    return p;
}

// One value per Wishart factor (W, nu), computed by `kernel` with the GIL released.
py::array_t<double> per_wishart(const py::object& W, const py::object& nu,
                                void (*kernel)(const nam::NWView&, double*)) {
    Shapes s;
    NWArrays q = wishart_arrays(W, nu, s);
    auto out = new_array(q.G);
    double* o = out.mutable_data();
    nam::NWView v{nullptr, nullptr, q.W.data(), q.nu.data(), q.G, q.D};
    py::gil_scoped_release release;
    kernel(v, o);
    return out;
}

py::array_t<double> expected_logdet(const py::object& W, const py::object& nu) {
    return per_wishart(W, nu, &nam::expected_logdet);
}

py::array_t<double> log_wishart_norm(const py::object& W, const py::object& nu) {
    return per_wishart(W, nu, &nam::log_wishart_norm);
}

py::array_t<double> expected_loglik(const py::object& Z_obj, const py::object& m,
                                    const py::object& lam, const py::object& W,
                                    const py::object& nu) {
    Shapes s;
    Arr Z = as_array(Z_obj, "Z");
    s.check(Z, "Z", {"n", "D"});
    NWArrays q = atom_arrays(m, lam, W, nu, s, "G", "D");
    const Index n = s["n"];
    auto out = new_array(n, q.G);
    double* o = out.mutable_data();
    const double* z = Z.data();
    const auto v = q.view();
    py::gil_scoped_release release;
    nam::expected_loglik(z, n, v, o);
    return out;
}

py::tuple weighted_stats(const py::object& Z_obj, const py::object& w_obj,
                         const py::object& centre_obj) {
    Shapes s;
    Arr Z = as_array(Z_obj, "Z"), w = as_array(w_obj, "w"), centre = as_array(centre_obj, "centre");
    s.check(Z, "Z", {"n", "D"});
    s.check(w, "w", {"n", "G"});
    s.check(centre, "centre", {"D"});
    const Index n = s["n"], D = s["D"], G = s["G"];
    auto n_out = new_array(G);
    auto s1 = new_array(G, D);
    auto s2 = new_array(G, D, D);
    double *pn = n_out.mutable_data(), *p1 = s1.mutable_data(), *p2 = s2.mutable_data();
    {
        py::gil_scoped_release release;
        nam::weighted_stats(Z.data(), n, D, w.data(), G, centre.data(), pn, p1, p2);
    }
    return py::make_tuple(n_out, s1, s2);
}

struct StatsArrays {
    Arr n, s1, s2, centre;
};

// `diagonal`: s2 (G, D) holds the diagonals of the second moments.
StatsArrays stats_arrays(const py::object& n, const py::object& s1, const py::object& s2,
                         const py::object& centre, Shapes& s, bool diagonal = false) {
    StatsArrays st{as_array(n, "n"), as_array(s1, "s1"), as_array(s2, "s2"),
                   as_array(centre, "centre")};
    s.check(st.n, "n", {"G"});
    s.check(st.s1, "s1", {"G", "D"});
    if (diagonal)
        s.check(st.s2, "s2", {"G", "D"});
    else
        s.check(st.s2, "s2", {"G", "D", "D"});
    s.check(st.centre, "centre", {"D"});
    return st;
}

// G atoms' statistics and one Normal-Wishart prior over D >= 1 dimensions, read and checked
// together (what nw_posterior and nw_scores take).
struct StatsUnderPrior {
    Shapes s;
    StatsArrays st;
    PriorArrays pr;
    Index G, D;
    StatsUnderPrior(const py::object& n, const py::object& s1, const py::object& s2,
                    const py::object& centre, const py::object& m0, double lam0,
                    const py::object& W0inv, double nu0, bool diagonal = false)
        : st(stats_arrays(n, s1, s2, centre, s, diagonal)),
          pr(prior_arrays(m0, lam0, W0inv, nu0, s, diagonal)) {
        s.at_least("D", 1, "s1");
        G = s["G"], D = s["D"];
    }
};

py::tuple nw_posterior(const py::object& n, const py::object& s1, const py::object& s2,
                       const py::object& centre, const py::object& m0, double lam0,
                       const py::object& W0inv, double nu0) {
    const StatsUnderPrior a(n, s1, s2, centre, m0, lam0, W0inv, nu0);
    const StatsArrays& st = a.st;
    const PriorArrays& pr = a.pr;
    const Index G = a.G, D = a.D;
    auto m = new_array(G, D);
    auto lam = new_array(G);
    auto W = new_array(G, D, D);
    auto nu = new_array(G);
    double *pm = m.mutable_data(), *pl = lam.mutable_data(), *pW = W.mutable_data(),
           *pnu = nu.mutable_data();
    {
        py::gil_scoped_release release;
        nam::nw_posterior(st.n.data(), st.s1.data(), st.s2.data(), G, st.centre.data(),
                          pr.prior(D), pm, pl, pW, pnu);
    }
    return py::make_tuple(m, lam, W, nu);
}

double nw_loglik_from_stats(const py::object& n, const py::object& s1, const py::object& s2,
                            const py::object& centre, const py::object& m, const py::object& lam,
                            const py::object& W, const py::object& nu) {
    Shapes s;
    StatsArrays st = stats_arrays(n, s1, s2, centre, s);
    NWArrays q = atom_arrays(m, lam, W, nu, s, "G", "D");
    const auto v = q.view();
    py::gil_scoped_release release;
    return nam::nw_loglik_from_stats(st.n.data(), st.s1.data(), st.s2.data(), st.centre.data(), v);
}

double nw_prior_term(const py::object& m, const py::object& lam, const py::object& W,
                     const py::object& nu, const py::object& m0, double lam0,
                     const py::object& W0inv, double nu0) {
    Shapes s;
    NWArrays q = atom_arrays(m, lam, W, nu, s, "G", "D");
    PriorArrays pr = prior_arrays(m0, lam0, W0inv, nu0, s);
    const auto v = q.view();
    const auto p = pr.prior(q.D);
    py::gil_scoped_release release;
    return nam::nw_prior_term(v, p);
}

double nw_entropy(const py::object& m, const py::object& lam, const py::object& W,
                  const py::object& nu) {
    Shapes s;
    NWArrays q = atom_arrays(m, lam, W, nu, s, "G", "D");
    const auto v = q.view();
    py::gil_scoped_release release;
    return nam::nw_entropy(v);
}

py::array_t<double> nw_scores(const py::object& n, const py::object& s1, const py::object& s2,
                              const py::object& centre, const py::object& m0, double lam0,
                              const py::object& W0inv, double nu0) {
    const StatsUnderPrior a(n, s1, s2, centre, m0, lam0, W0inv, nu0);
    auto out = new_array(a.G);
    double* o = out.mutable_data();
    {
        py::gil_scoped_release release;
        nam::nw_scores(a.st.n.data(), a.st.s1.data(), a.st.s2.data(), a.G, a.st.centre.data(),
                       a.pr.prior(a.D), o);
    }
    return out;
}

// ---- diagonal (Normal-Gamma) atoms ----------------------------------------------------------
// The same arguments as their Normal-Wishart counterparts, with W (G, D), W0inv (D,) and
// s2 (G, D) the diagonals.

nam::DiagView diag_view(const NWArrays& q) {
    return {q.m.data(), q.lam.data(), q.W.data(), q.nu.data(), q.G, q.D};
}

py::array_t<double> diag_expected_loglik(const py::object& Z_obj, const py::object& m,
                                         const py::object& lam, const py::object& W,
                                         const py::object& nu) {
    Shapes s;
    Arr Z = as_array(Z_obj, "Z");
    s.check(Z, "Z", {"n", "D"});
    NWArrays q = atom_arrays(m, lam, W, nu, s, "G", "D", true);
    const Index n = s["n"];
    auto out = new_array(n, q.G);
    double* o = out.mutable_data();
    const double* z = Z.data();
    const auto v = diag_view(q);
    py::gil_scoped_release release;
    nam::diag_expected_loglik(z, n, v, o);
    return out;
}

py::tuple diag_weighted_stats(const py::object& Z_obj, const py::object& w_obj,
                              const py::object& centre_obj) {
    Shapes s;
    Arr Z = as_array(Z_obj, "Z"), w = as_array(w_obj, "w"), centre = as_array(centre_obj, "centre");
    s.check(Z, "Z", {"n", "D"});
    s.check(w, "w", {"n", "G"});
    s.check(centre, "centre", {"D"});
    const Index n = s["n"], D = s["D"], G = s["G"];
    auto n_out = new_array(G);
    auto s1 = new_array(G, D);
    auto s2 = new_array(G, D);
    double *pn = n_out.mutable_data(), *p1 = s1.mutable_data(), *p2 = s2.mutable_data();
    {
        py::gil_scoped_release release;
        nam::diag_weighted_stats(Z.data(), n, D, w.data(), G, centre.data(), pn, p1, p2);
    }
    return py::make_tuple(n_out, s1, s2);
}

py::tuple diag_posterior(const py::object& n, const py::object& s1, const py::object& s2,
                         const py::object& centre, const py::object& m0, double lam0,
                         const py::object& W0inv, double nu0) {
    const StatsUnderPrior a(n, s1, s2, centre, m0, lam0, W0inv, nu0, true);
    const Index G = a.G, D = a.D;
    auto m = new_array(G, D);
    auto lam = new_array(G);
    auto W = new_array(G, D);
    auto nu = new_array(G);
    double *pm = m.mutable_data(), *pl = lam.mutable_data(), *pW = W.mutable_data(),
           *pnu = nu.mutable_data();
    {
        py::gil_scoped_release release;
        nam::diag_posterior(a.st.n.data(), a.st.s1.data(), a.st.s2.data(), G,
                            a.st.centre.data(), a.pr.diag_prior(D), pm, pl, pW, pnu);
    }
    return py::make_tuple(m, lam, W, nu);
}

double diag_loglik_from_stats(const py::object& n, const py::object& s1, const py::object& s2,
                              const py::object& centre, const py::object& m,
                              const py::object& lam, const py::object& W, const py::object& nu) {
    Shapes s;
    StatsArrays st = stats_arrays(n, s1, s2, centre, s, true);
    NWArrays q = atom_arrays(m, lam, W, nu, s, "G", "D", true);
    const auto v = diag_view(q);
    py::gil_scoped_release release;
    return nam::diag_loglik_from_stats(st.n.data(), st.s1.data(), st.s2.data(),
                                       st.centre.data(), v);
}

double diag_prior_term(const py::object& m, const py::object& lam, const py::object& W,
                       const py::object& nu, const py::object& m0, double lam0,
                       const py::object& W0inv, double nu0) {
    Shapes s;
    NWArrays q = atom_arrays(m, lam, W, nu, s, "G", "D", true);
    PriorArrays pr = prior_arrays(m0, lam0, W0inv, nu0, s, true);
    const auto v = diag_view(q);
    const auto p = pr.diag_prior(q.D);
    py::gil_scoped_release release;
    return nam::diag_prior_term(v, p);
}

double diag_entropy(const py::object& m, const py::object& lam, const py::object& W,
                    const py::object& nu) {
    Shapes s;
    NWArrays q = atom_arrays(m, lam, W, nu, s, "G", "D", true);
    const auto v = diag_view(q);
    py::gil_scoped_release release;
    return nam::diag_entropy(v);
}

py::array_t<double> diag_scores(const py::object& n, const py::object& s1, const py::object& s2,
                                const py::object& centre, const py::object& m0, double lam0,
                                const py::object& W0inv, double nu0) {
    const StatsUnderPrior a(n, s1, s2, centre, m0, lam0, W0inv, nu0, true);
    auto out = new_array(a.G);
    double* o = out.mutable_data();
    {
        py::gil_scoped_release release;
        nam::diag_scores(a.st.n.data(), a.st.s1.data(), a.st.s2.data(), a.G,
                         a.st.centre.data(), a.pr.diag_prior(a.D), o);
    }
    return out;
}

// ---- local steps --------------------------------------------------------------------------

py::array_t<std::int64_t> as_offsets(const py::object& obj, Index N) {
    py::array raw = py::array::ensure(obj);
    if (!raw) fail("offsets must be convertible to an integer array");
    const char kind = raw.dtype().kind();
    if (kind != 'i' && kind != 'u')
        fail("offsets must have an integer dtype, got " + std::string(py::str(raw.dtype())));
    auto off = py::array_t<std::int64_t, py::array::c_style | py::array::forcecast>::ensure(raw);
    if (!off) fail("offsets must be convertible to int64");
    if (off.ndim() != 1 || off.shape(0) < 1)
        fail("offsets must be 1-D with shape (J + 1,), got shape " + shape_str(off));
    const std::int64_t* o = off.data();
    const Index J = off.shape(0) - 1;
    if (o[0] != 0) fail("offsets[0] must be 0, got " + std::to_string(o[0]));
    if (o[J] != N)
        fail("offsets[-1] must equal the number of cells N = " + std::to_string(N) + ", got " +
             std::to_string(o[J]));
    for (Index j = 0; j < J; ++j)
        if (o[j + 1] < o[j]) fail("offsets must be non-decreasing (cells sorted by group)");
    return off;
}

// The arguments both cell steps share, read and checked once: Y (N, p) with its group offsets,
// rho (J, K), E log omega (L, K), the atoms (Normal-Wishart, or diagonal with ``diagonal``), the
// centre, and the output xi (N, L), which may share memory with none of them.
struct CellStepArgs {
    Shapes s;
    Arr Y, rho, elog_omega, centre;
    py::array_t<std::int64_t> offsets;
    NWArrays q;
    py::array_t<double> xi;
    Index N = 0, J = 0, p = 0, K = 0, L = 0;
    bool diagonal = false;

    CellStepArgs(const py::object& Y_obj, const py::object& offsets_obj, const py::object& rho_obj,
                 const py::object& elog_omega_obj, const py::object& m, const py::object& lam,
                 const py::object& W, const py::object& nu, const py::object& centre_obj,
                 const py::object& xi_obj, const char* xi_name, bool diagonal_atoms = false)
        : diagonal(diagonal_atoms) {
        Y = as_array(Y_obj, "Y");
        s.check(Y, "Y", {"N", "p"});
        N = s["N"];
        offsets = as_offsets(offsets_obj, N);
        J = offsets.shape(0) - 1;
        rho = as_array(rho_obj, "rho");
        elog_omega = as_array(elog_omega_obj, "elog_omega");
        s.define("J", J);  // J = len(offsets) - 1
        s.check(rho, "rho", {"J", "K"});
        s.check(elog_omega, "elog_omega", {"L", "K"});
        q = atom_arrays(m, lam, W, nu, s, "L", "p", diagonal);
        s.at_least("L", 1, "elog_omega");
        centre = as_array(centre_obj, "centre");
        s.check(centre, "centre", {"p"});
        p = s["p"], K = s["K"], L = s["L"];
        xi = out_array(xi_obj, xi_name, {N, L}, "(N, L)");
        for (const auto& [arr, name] :
             std::vector<std::pair<py::array, const char*>>{{Y, "Y"}, {rho, "rho"},
                 {elog_omega, "elog_omega"}, {q.m, "m"}, {q.lam, "lam"}, {q.W, "W"},
                 {q.nu, "nu"}, {centre, "centre"}, {offsets, "offsets"}})
            if (overlaps(xi, arr))
                fail(std::string(xi_name) + " must not share memory with " + name);
    }

    // The core's view of them, with the optional group weights (``keep`` holds them alive).
    nam::CellStepInput input(const py::object& group_weight_obj, const char* xi_name,
                             Arr& keep);
};

// What a cell step returns besides xi: N_jl (J, L) and the statistics n (L), s1 (L, p) and
// s2 (L, p, p), or (L, p) for diagonal atoms (of the cells, or of the change of the rows, for
// the rows cell step).
struct CellStats {
    py::array_t<double> N_jl, n, s1, s2;
    CellStats(Index J, Index L, Index p, bool diagonal)
        : N_jl(new_array(J, L)), n(new_array(L)), s1(new_array(L, p)),
          s2(diagonal ? new_array(L, p) : new_array(L, p, p)) {}
    py::tuple with(double entropy) const { return py::make_tuple(N_jl, n, s1, s2, entropy); }
};

// The optional per-group weights of both cell steps: None, or (J,) finite and >= 0, not
// sharing memory with the output xi.  ``keep`` holds the converted array alive.
const double* group_weights_of(const py::object& obj, Shapes& s, Index J, const py::array& xi,
                               const char* xi_name, Arr& keep) {
    if (obj.is_none()) return nullptr;
    keep = as_array(obj, "group_weight");
    s.check(keep, "group_weight", {"J"});
    const double* w = keep.data();
    for (Index j = 0; j < J; ++j)
        if (!(w[j] >= 0.0 && std::isfinite(w[j])))
            fail("group_weight must be finite and >= 0, got " + std::to_string(w[j]));
    if (overlaps(xi, keep)) fail(std::string(xi_name) + " must not share memory with group_weight");
    return w;
}

nam::CellStepInput CellStepArgs::input(const py::object& group_weight_obj, const char* xi_name,
                                       Arr& keep) {
    nam::CellStepInput in{Y.data(), N, p, offsets.data(), J, rho.data(), K, elog_omega.data(), L,
                          q.view(), centre.data()};
    in.group_weight = group_weights_of(group_weight_obj, s, J, xi, xi_name, keep);
    in.diagonal = diagonal;
    return in;
}

py::tuple cell_step_of(bool diagonal, const py::object& Y_obj, const py::object& offsets_obj,
                       const py::object& rho_obj, const py::object& elog_omega_obj,
                       const py::object& m, const py::object& lam, const py::object& W,
                       const py::object& nu, const py::object& centre_obj,
                       const py::object& xi_out_obj, int n_threads,
                       const py::object& group_weight_obj) {
    CellStepArgs a(Y_obj, offsets_obj, rho_obj, elog_omega_obj, m, lam, W, nu, centre_obj,
                   xi_out_obj, "xi_out", diagonal);

    CellStats stats(a.J, a.L, a.p, diagonal);
    Arr group_weight;
    const nam::CellStepInput in = a.input(group_weight_obj, "xi_out", group_weight);
    nam::CellStepOutput out{a.xi.mutable_data(), stats.N_jl.mutable_data(),
                            stats.n.mutable_data(), stats.s1.mutable_data(),
                            stats.s2.mutable_data()};
    // Ctrl-C: signals are only delivered to the main thread, so only a call from it polls.
    auto threading = py::module_::import("threading");
    const bool main_thread =
        threading.attr("get_ident")().equal(threading.attr("main_thread")().attr("ident"));
    std::function<bool()> interrupted;
    if (main_thread)
        interrupted = [] {
            py::gil_scoped_acquire gil;
            // A signal handler that raised (KeyboardInterrupt, or whatever a custom handler
            // raises) becomes a C++ exception thrown inside the OpenMP region; the core catches
            // it there and rethrows it after the region, the path every error inside it takes
            // (tests/test_interrupt.py raises through it), and pybind11 restores it in Python.
            if (PyErr_CheckSignals() != 0) throw py::error_already_set();
            return false;
        };
    double entropy;
    {
        py::gil_scoped_release release;
        entropy = nam::cell_step(in, out, n_threads, interrupted);
    }
    return stats.with(entropy);
}

py::tuple cell_step_rows_of(bool diagonal, const py::object& Y_obj,
                            const py::object& offsets_obj, const py::object& rows_obj,
                            const py::object& rho_obj, const py::object& elog_omega_obj,
                            const py::object& m, const py::object& lam, const py::object& W,
                            const py::object& nu, const py::object& centre_obj,
                            const py::object& xi_obj, int n_threads,
                            const py::object& group_weight_obj) {
    CellStepArgs a(Y_obj, offsets_obj, rho_obj, elog_omega_obj, m, lam, W, nu, centre_obj,
                   xi_obj, "xi", diagonal);
    const Index N = a.N;
    py::array raw_rows = py::array::ensure(rows_obj);
    if (!raw_rows || (raw_rows.dtype().kind() != 'i' && raw_rows.dtype().kind() != 'u'))
        fail("rows must be an integer array of cell indices");
    auto rows = py::array_t<std::int64_t, py::array::c_style | py::array::forcecast>::ensure(raw_rows);
    if (!rows || rows.ndim() != 1) fail("rows must be 1-D, got shape " + shape_str(raw_rows));
    const std::int64_t* r = rows.data();
    const Index n_rows = rows.shape(0);
    for (Index i = 0; i < n_rows; ++i) {
        if (r[i] < 0 || r[i] >= N)
            fail("rows must index the N = " + std::to_string(N) + " cells, got " +
                 std::to_string(r[i]));
        if (i > 0 && r[i] <= r[i - 1]) fail("rows must be strictly increasing (sorted, unique)");
    }
    if (overlaps(a.xi, rows)) fail("xi must not share memory with rows");
    CellStats change(a.J, a.L, a.p, diagonal);
    Arr group_weight;
    const nam::CellStepInput in = a.input(group_weight_obj, "xi", group_weight);
    nam::CellRowsOutput out{a.xi.mutable_data(), change.N_jl.mutable_data(),
                            change.n.mutable_data(), change.s1.mutable_data(),
                            change.s2.mutable_data()};
    double dH;
    {
        py::gil_scoped_release release;
        dH = nam::cell_step_rows(in, r, n_rows, out, n_threads);
    }
    return change.with(dH);
}

// The two families' cell steps, with the arguments the protocol names.
template <bool Diagonal>
py::tuple cell_step(const py::object& Y, const py::object& offsets, const py::object& rho,
                    const py::object& elog_omega, const py::object& m, const py::object& lam,
                    const py::object& W, const py::object& nu, const py::object& centre,
                    const py::object& xi_out, int n_threads, const py::object& group_weight) {
    return cell_step_of(Diagonal, Y, offsets, rho, elog_omega, m, lam, W, nu, centre, xi_out,
                        n_threads, group_weight);
}

template <bool Diagonal>
py::tuple cell_step_rows(const py::object& Y, const py::object& offsets, const py::object& rows,
                         const py::object& rho, const py::object& elog_omega,
                         const py::object& m, const py::object& lam, const py::object& W,
                         const py::object& nu, const py::object& centre, const py::object& xi,
                         int n_threads, const py::object& group_weight) {
    return cell_step_rows_of(Diagonal, Y, offsets, rows, rho, elog_omega, m, lam, W, nu, centre,
                             xi, n_threads, group_weight);
}

double group_step(const py::object& N_jl_obj, const py::object& elog_pi_obj,
                  const py::object& elog_omega_obj, const py::object& ell_x_obj,
                  const py::object& rho_out_obj) {
    Shapes s;
    Arr N_jl = as_array(N_jl_obj, "N_jl"), elog_pi = as_array(elog_pi_obj, "elog_pi"),
        elog_omega = as_array(elog_omega_obj, "elog_omega"), ell_x = as_array(ell_x_obj, "ell_x");
    s.check(N_jl, "N_jl", {"J", "L"});
    s.check(elog_pi, "elog_pi", {"K"});
    s.check(elog_omega, "elog_omega", {"L", "K"});
    s.check(ell_x, "ell_x", {"J", "K"});
    s.at_least("K", 1, "elog_pi");
    const Index J = s["J"], L = s["L"], K = s["K"];
    auto rho_out = out_array(rho_out_obj, "rho_out", {J, K}, "(J, K)");
    for (const auto& [arr, name] : std::vector<std::pair<py::array, const char*>>{
             {N_jl, "N_jl"}, {elog_pi, "elog_pi"}, {elog_omega, "elog_omega"}, {ell_x, "ell_x"}})
        if (overlaps(rho_out, arr)) fail(std::string("rho_out must not share memory with ") + name);
    double* r = rho_out.mutable_data();
    py::gil_scoped_release release;
    return nam::group_step(N_jl.data(), elog_pi.data(), elog_omega.data(), ell_x.data(), J, L, K,
                           r);
}

// ---- group-only ascent ---------------------------------------------------------------------

// (shape, rate, fixed) with fixed None (learned) or a positive value.
nam::ConcentrationSpec concentration_spec(const py::object& obj, const std::string& name) {
    py::tuple t;
    try {
        t = py::tuple(obj);
    } catch (const py::error_already_set&) {
        fail(name + " must be a tuple (shape, rate, fixed), fixed None when learned");
    }
    if (t.size() != 3) fail(name + " must be a tuple (shape, rate, fixed), fixed None when learned");
    nam::ConcentrationSpec c{t[0].cast<double>(), t[1].cast<double>(),
                             t[2].is_none() ? std::nan("") : t[2].cast<double>()};
    if (c.learned() && !(c.shape > 0.0 && c.rate > 0.0 && std::isfinite(c.shape) &&
                         std::isfinite(c.rate)))
        fail(name + ": a learned concentration needs a finite positive shape and rate");
    if (!c.learned() && !(c.fixed > 0.0 && std::isfinite(c.fixed)))
        fail(name + ": a fixed concentration must be finite and positive, got " +
             std::to_string(c.fixed));
    return c;
}

void check_finite(const Arr& a, const std::string& name) {
    const double* p = a.data();
    for (py::ssize_t i = 0; i < a.size(); ++i)
        if (!std::isfinite(p[i])) fail(name + " must be finite (found " + std::to_string(p[i]) + ")");
}

py::array_t<double> numpy_copy(const double* data, const std::vector<py::ssize_t>& shape) {
    py::array_t<double> a(shape);
    std::copy(data, data + a.size(), a.mutable_data());
    return a;
}

py::list group_ascent(const py::object& counts_obj, const py::object& rho_obj,
                      const py::object& conc_obj, const py::object& x_scale_obj,
                      const py::object& X_obj, const py::object& x_centre_obj,
                      const py::object& x_prior_obj, const py::object& alpha_prior_obj,
                      const py::object& beta_prior_obj, int max_iter, double tol,
                      int n_threads) {
    Shapes s;
    Arr counts = as_array(counts_obj, "counts"), rho = as_array(rho_obj, "rho"),
        conc = as_array(conc_obj, "conc"), x_scale = as_array(x_scale_obj, "x_scale");
    s.check(counts, "counts", {"J", "L"});
    s.check(rho, "rho", {"B", "J", "K"});
    s.define("4", 4);
    s.check(conc, "conc", {"B", "4"});
    s.check(x_scale, "x_scale", {"B"});
    s.at_least("J", 1, "counts");
    s.at_least("L", 1, "counts");
    s.at_least("K", 1, "rho");
    if (max_iter < 0) fail("max_iter must be >= 0, got " + std::to_string(max_iter));
    if (!(tol >= 0.0)) fail("tol must be >= 0, got " + std::to_string(tol));
    check_finite(counts, "counts");
    check_finite(rho, "rho");
    check_finite(conc, "conc");
    for (py::ssize_t b = 0; b < x_scale.size(); ++b)
        if (!(x_scale.data()[b] > 0.0 && std::isfinite(x_scale.data()[b])))
            fail("x_scale must be finite and positive, got " + std::to_string(x_scale.data()[b]));
    const Index B = s["B"], J = s["J"], L = s["L"], K = s["K"];

    nam::GroupAscentInput in{};
    in.counts = counts.data();
    in.J = J;
    in.L = L;
    in.K = K;
    in.alpha = concentration_spec(alpha_prior_obj, "alpha_prior");
    in.beta = concentration_spec(beta_prior_obj, "beta_prior");
    in.max_iter = max_iter;
    in.tol = tol;
    Arr X, x_centre, m0, W0inv;
    if (!X_obj.is_none()) {
        X = as_array(X_obj, "X");
        s.check(X, "X", {"J", "q"});
        s.at_least("q", 1, "X");
        check_finite(X, "X");
        x_centre = as_array(x_centre_obj, "x_centre");
        s.check(x_centre, "x_centre", {"q"});
        py::tuple prior;
        try {
            prior = py::tuple(x_prior_obj);
        } catch (const py::error_already_set&) {
            fail("x_prior must be a tuple (m0, lam0, W0inv, nu0) when X is given");
        }
        if (prior.size() != 4) fail("x_prior must be a tuple (m0, lam0, W0inv, nu0) when X is given");
        m0 = as_array(prior[0], "x_prior m0");
        W0inv = as_array(prior[2], "x_prior W0inv");
        s.check(m0, "x_prior m0", {"q"});
        s.check(W0inv, "x_prior W0inv", {"q", "q"});
        in.X = X.data();
        in.q = s["q"];
        in.x_centre = x_centre.data();
        in.x_prior = nam::NWPrior{m0.data(), prior[1].cast<double>(), W0inv.data(),
                                  prior[3].cast<double>(), in.q};
    }
    std::vector<nam::GroupFactors> cands(static_cast<size_t>(B));
    for (Index b = 0; b < B; ++b) {
        auto& f = cands[static_cast<size_t>(b)];
        f.rho = nam::CMapRowMat(rho.data() + b * J * K, J, K);
        const double* c = conc.data() + 4 * b;
        f.alpha_shape = c[0];
        f.alpha_rate = c[1];
        f.beta_shape = c[2];
        f.beta_rate = c[3];
        f.x_scale = x_scale.data()[b];
    }
    {
        py::gil_scoped_release release;
        nam::group_ascent(in, cands, n_threads);
    }
    py::list out;
    const Index q = in.q;
    for (const auto& f : cands) {
        py::dict d;
        d["rho"] = numpy_copy(f.rho.data(), {J, K});
        d["v_a"] = numpy_copy(f.v_a.data(), {K - 1, 1});
        d["v_b"] = numpy_copy(f.v_b.data(), {K - 1, 1});
        d["u_a"] = numpy_copy(f.u_a.data(), {L - 1, K});
        d["u_b"] = numpy_copy(f.u_b.data(), {L - 1, K});
        d["alpha_shape"] = f.alpha_shape;
        d["alpha_rate"] = f.alpha_rate;
        d["beta_shape"] = f.beta_shape;
        d["beta_rate"] = f.beta_rate;
        if (in.X) {
            d["mx"] = numpy_copy(f.mx.data(), {K, q});
            d["lamx"] = numpy_copy(f.lamx.data(), {K});
            d["Wx"] = numpy_copy(f.Wx.data(), {K, q, q});
            d["nux"] = numpy_copy(f.nux.data(), {K});
        } else {
            for (const char* key : {"mx", "lamx", "Wx", "nux"}) d[key] = py::none();
        }
        d["H_rho"] = f.H_rho;
        d["elbo"] = f.elbo;
        d["n_iter"] = f.n_iter;
        out.append(d);
    }
    return out;
}

// ---- entropy change of merged atoms -------------------------------------------------------

py::array_t<double> merged_entropy_change(const py::object& xi_obj, const py::object& groups_obj,
                                          const py::object& offsets_obj,
                                          const py::object& group_weight_obj, int n_threads) {
    Shapes s;
    Arr xi = as_array(xi_obj, "xi");
    s.check(xi, "xi", {"N", "L"});
    const Index N = s["N"], L = s["L"];
    std::vector<std::int64_t> cols, starts{0};
    for (const auto& group : groups_obj) {
        std::vector<std::int64_t> members;
        try {
            members = group.cast<std::vector<std::int64_t>>();
        } catch (const py::cast_error&) {
            fail("groups must be a list of lists of column indices");
        }
        for (const auto l : members) {
            if (l < 0 || l >= L)
                fail("groups: column " + std::to_string(l) + " is not one of the L = " +
                     std::to_string(L) + " columns of xi");
            if (std::find(cols.begin() + starts.back(), cols.end(), l) != cols.end())
                fail("groups: column " + std::to_string(l) + " appears twice in one group");
            cols.push_back(l);
        }
        starts.push_back(static_cast<std::int64_t>(cols.size()));
    }
    const Index n_groups = static_cast<Index>(starts.size()) - 1;
    py::array_t<std::int64_t> offsets;
    Arr group_weight;
    const std::int64_t* off = nullptr;
    const double* gw = nullptr;
    Index J = 0;
    if (!group_weight_obj.is_none()) {
        offsets = as_offsets(offsets_obj, N);
        J = offsets.shape(0) - 1;
        s.define("J", J);
        group_weight = as_array(group_weight_obj, "group_weight");
        s.check(group_weight, "group_weight", {"J"});
        for (Index j = 0; j < J; ++j)
            if (!(group_weight.data()[j] >= 0.0 && std::isfinite(group_weight.data()[j])))
                fail("group_weight must be finite and >= 0");
        off = offsets.data();
        gw = group_weight.data();
    }
    auto out = new_array(n_groups);
    double* o = out.mutable_data();
    const double* x = xi.data();
    {
        py::gil_scoped_release release;
        nam::merged_entropy_change(x, N, L, cols.data(), starts.data(), n_groups, off, gw, J, o,
                                   n_threads);
    }
    return out;
}

// ---- build information --------------------------------------------------------------------

py::dict build_info() {
    py::dict info;
#if defined(__clang__)
    info["compiler"] = std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
    info["compiler"] = std::string("gcc ") + __VERSION__;
#elif defined(_MSC_VER)
    info["compiler"] = std::string("msvc ") + std::to_string(_MSC_VER);
#else
    info["compiler"] = std::string("unknown");
#endif
    info["eigen_version"] = std::to_string(EIGEN_WORLD_VERSION) + "." +
                            std::to_string(EIGEN_MAJOR_VERSION) + "." +
                            std::to_string(EIGEN_MINOR_VERSION);
    info["openmp"] = nam::openmp_enabled();
#ifdef NESTEDATOMS_OPENMP
    info["openmp_version"] = static_cast<long>(_OPENMP);
#endif
    info["simd"] = std::string(Eigen::SimdInstructionSetsInUse());
    std::vector<std::string> isa;
#ifdef EIGEN_VECTORIZE_SSE2
    isa.push_back("SSE2");
#endif
#ifdef EIGEN_VECTORIZE_SSE4_2
    isa.push_back("SSE4.2");
#endif
#ifdef EIGEN_VECTORIZE_AVX
    isa.push_back("AVX");
#endif
#ifdef EIGEN_VECTORIZE_AVX2
    isa.push_back("AVX2");
#endif
#ifdef EIGEN_VECTORIZE_FMA
    isa.push_back("FMA");
#endif
#ifdef EIGEN_VECTORIZE_AVX512
    isa.push_back("AVX512");
#endif
#ifdef EIGEN_VECTORIZE_NEON
    isa.push_back("NEON");
#endif
    info["simd_flags"] = isa;
#ifdef NESTEDATOMS_NATIVE
    info["native"] = true;
#else
    info["native"] = false;
#endif
    info["cell_block"] = static_cast<long>(nam::kCellBlock);
    info["isa"] = std::string(NESTEDATOMS_ISA);
    return info;
}

// What this CPU (and its operating system) supports, for picking a module at import.  GCC's and
// Clang's __builtin_cpu_supports also check that the OS saves the AVX / AVX-512 registers.
py::dict cpu_features() {
    py::dict f;
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();
    f["avx2"] = static_cast<bool>(__builtin_cpu_supports("avx2"));
    f["fma"] = static_cast<bool>(__builtin_cpu_supports("fma"));
    f["avx512f"] = static_cast<bool>(__builtin_cpu_supports("avx512f"));
    f["avx512dq"] = static_cast<bool>(__builtin_cpu_supports("avx512dq"));
    f["avx512bw"] = static_cast<bool>(__builtin_cpu_supports("avx512bw"));
    f["avx512vl"] = static_cast<bool>(__builtin_cpu_supports("avx512vl"));
#endif
    return f;
}

}  // namespace

PYBIND11_MODULE(NESTEDATOMS_MODULE_NAME, mod) {
    mod.doc() =
        "nestedatoms C++ core: the CAVI steps of the Nested Atoms Model (SPEC sections 4-7).\n"
        "Same functions, arguments and results as nestedatoms.reference.";
    mod.attr("NAME") = "cpp";
    mod.attr("ISA") = NESTEDATOMS_ISA;
    using py::arg;

    mod.def("digamma", [](const py::object& x) { return elementwise<digamma_scalar>(x, "x"); },
            arg("x"), "Digamma psi(x), elementwise.");
    mod.def("lgamma", [](const py::object& x) { return elementwise<lgamma_scalar>(x, "x"); },
            arg("x"), "log Gamma(x), elementwise.");

    mod.def("expected_log_stick_weights", &expected_log_stick_weights, arg("a"), arg("b"),
            "E log of stick-breaking weights: (G - 1, C) Beta parameters -> (G, C).");
    mod.def("update_sticks", &update_sticks, arg("counts"), arg("concentration"),
            "Beta posteriors (a, b) of the free sticks from expected counts (G, C).");
    mod.def("update_concentration", &update_concentration, arg("prior_shape"), arg("prior_rate"),
            arg("a"), arg("b"), "Gamma posterior (shape, rate) of a DP concentration.");
    mod.def("stick_prior_term", &stick_prior_term, arg("a"), arg("b"), arg("e_conc"),
            arg("elog_conc"), "E log p(sticks | concentration).");
    mod.def("beta_entropy", &beta_entropy, arg("a"), arg("b"),
            "Sum of the entropies of Beta(a, b) factors.");
    mod.def("gamma_expectations",
            [](double shape, double rate) {
                const auto r = nam::gamma_expectations(shape, rate);
                return py::make_tuple(r.first, r.second);
            },
            arg("shape"), arg("rate"), "(E x, E log x) for x ~ Gamma(shape, rate).");
    mod.def("gamma_prior_term", &nam::gamma_prior_term, arg("prior_shape"), arg("prior_rate"),
            arg("shape"), arg("rate"), "E_q log Gamma(x | prior_shape, prior_rate).");
    mod.def("gamma_entropy", &nam::gamma_entropy, arg("shape"), arg("rate"),
            "Entropy of Gamma(shape, rate).");
    mod.def("categorical_entropy", &categorical_entropy, arg("r"), "-sum r log r, 0 log 0 = 0.");

    mod.def("expected_logdet", &expected_logdet, arg("W"), arg("nu"),
            "E log|Lambda| for Lambda ~ Wishart(W, nu), per atom.");
    mod.def("log_wishart_norm", &log_wishart_norm, arg("W"), arg("nu"), "log B_W(W, nu), per atom.");
    mod.def("expected_loglik", &expected_loglik, arg("Z"), arg("m"), arg("lam"), arg("W"),
            arg("nu"), "ell_g(z) = E log N(z | mu_g, Lambda_g^-1): (n, G).");
    mod.def("weighted_stats", &weighted_stats, arg("Z"), arg("w"), arg("centre"),
            "Weighted sufficient statistics (n, s1, s2) about centre.");
    mod.def("nw_posterior", &nw_posterior, arg("n"), arg("s1"), arg("s2"), arg("centre"),
            arg("m0"), arg("lam0"), arg("W0inv"), arg("nu0"),
            "Normal-Wishart posteriors (m, lam, W, nu); n <= 0 gives exactly the prior.");
    mod.def("nw_loglik_from_stats", &nw_loglik_from_stats, arg("n"), arg("s1"), arg("s2"),
            arg("centre"), arg("m"), arg("lam"), arg("W"), arg("nu"),
            "E log p(Z | assignments, theta) summed over atoms, from weighted statistics.");
    mod.def("nw_prior_term", &nw_prior_term, arg("m"), arg("lam"), arg("W"), arg("nu"),
            arg("m0"), arg("lam0"), arg("W0inv"), arg("nu0"), "E_q log p(theta), summed.");
    mod.def("nw_entropy", &nw_entropy, arg("m"), arg("lam"), arg("W"), arg("nu"),
            "Entropy of the Normal-Wishart factors, summed.");

    mod.def("nw_scores", &nw_scores, arg("n"), arg("s1"), arg("s2"), arg("centre"), arg("m0"),
            arg("lam0"), arg("W0inv"), arg("nu0"),
            "Per atom: loglik + prior term + entropy at the atom's posterior given its "
            "statistics, (G,).");
    mod.def("cell_step", &cell_step<false>, arg("Y"), arg("offsets"), arg("rho"), arg("elog_omega"),
            arg("m"), arg("lam"), arg("W"), arg("nu"), arg("centre"), arg("xi_out"),
            arg("n_threads") = 1, arg("group_weight") = py::none(),
            "Update q(M) into xi_out; returns (N_jl, n, s1, s2, entropy).  n_threads <= 0 uses "
            "all available threads; results are bitwise identical for every n_threads.  "
            "group_weight (J,), optional: weight of each group's cells in (n, s1, s2) and the "
            "entropy (xi and N_jl are unweighted).");
    mod.def("cell_step_rows", &cell_step_rows<false>, arg("Y"), arg("offsets"), arg("rows"),
            arg("rho"), arg("elog_omega"), arg("m"), arg("lam"), arg("W"), arg("nu"),
            arg("centre"), arg("xi"), arg("n_threads") = 1, arg("group_weight") = py::none(),
            "Update q(M) of the given cells (rows: increasing indices) in xi, in place; returns "
            "the change (dN_jl, dn, ds1, ds2, dH) of the statistics the cell step returns.  "
            "Bitwise identical for every n_threads.");
    mod.def("diag_expected_loglik", &diag_expected_loglik, arg("Z"), arg("m"), arg("lam"),
            arg("W"), arg("nu"),
            "Diagonal atoms: ell_g(z) = sum_d E log N(z_d | mu_gd, tau_gd^-1): (n, G).");
    mod.def("diag_weighted_stats", &diag_weighted_stats, arg("Z"), arg("w"), arg("centre"),
            "Weighted statistics (n, s1, s2) about centre, s2 (G, D) the diagonal.");
    mod.def("diag_posterior", &diag_posterior, arg("n"), arg("s1"), arg("s2"), arg("centre"),
            arg("m0"), arg("lam0"), arg("W0inv"), arg("nu0"),
            "Normal-Gamma posteriors (m, lam, W (G, D), nu); n <= 0 gives exactly the prior.");
    mod.def("diag_loglik_from_stats", &diag_loglik_from_stats, arg("n"), arg("s1"), arg("s2"),
            arg("centre"), arg("m"), arg("lam"), arg("W"), arg("nu"),
            "Diagonal atoms: E log p(Z | assignments, theta) summed, from weighted statistics.");
    mod.def("diag_prior_term", &diag_prior_term, arg("m"), arg("lam"), arg("W"), arg("nu"),
            arg("m0"), arg("lam0"), arg("W0inv"), arg("nu0"),
            "Diagonal atoms: E_q log p(theta), summed.");
    mod.def("diag_entropy", &diag_entropy, arg("m"), arg("lam"), arg("W"), arg("nu"),
            "Entropy of the Normal-Gamma factors, summed.");
    mod.def("diag_scores", &diag_scores, arg("n"), arg("s1"), arg("s2"), arg("centre"),
            arg("m0"), arg("lam0"), arg("W0inv"), arg("nu0"),
            "Diagonal atoms, per atom: loglik + prior term + entropy at its posterior, (G,).");
    mod.def("diag_cell_step", &cell_step<true>, arg("Y"), arg("offsets"), arg("rho"),
            arg("elog_omega"), arg("m"), arg("lam"), arg("W"), arg("nu"), arg("centre"),
            arg("xi_out"), arg("n_threads") = 1, arg("group_weight") = py::none(),
            "cell_step with diagonal atoms (W (L, p)); s2 of the statistics is (L, p).");
    mod.def("diag_cell_step_rows", &cell_step_rows<true>, arg("Y"), arg("offsets"),
            arg("rows"), arg("rho"), arg("elog_omega"), arg("m"), arg("lam"), arg("W"),
            arg("nu"), arg("centre"), arg("xi"), arg("n_threads") = 1,
            arg("group_weight") = py::none(),
            "cell_step_rows with diagonal atoms (W (L, p)); ds2 is (L, p).");
    mod.def("group_step", &group_step, arg("N_jl"), arg("elog_pi"), arg("elog_omega"),
            arg("ell_x"), arg("rho_out"), "Update q(S) into rho_out; returns the entropy.");

    mod.def("group_ascent", &group_ascent, arg("counts"), arg("rho"), arg("conc"),
            arg("x_scale"), arg("X"), arg("x_centre"), arg("x_prior"), arg("alpha_prior"),
            arg("beta_prior"), arg("max_iter") = 200, arg("tol") = 1e-7, arg("n_threads") = 1,
            "Group-only coordinate ascent (cells fixed) of B candidates to convergence; returns "
            "one dict of refined factors per candidate, with the group-level ELBO.  Candidates "
            "run in parallel; results are bitwise identical for every n_threads.");
    mod.def("merged_entropy_change", &merged_entropy_change, arg("xi"), arg("groups"),
            arg("offsets") = py::none(), arg("group_weight") = py::none(),
            arg("n_threads") = 1,
            "Change of -sum xi log xi when each group of xi's columns is summed into one: "
            "(n_groups,), rows weighted by their group's group_weight (with offsets) if given.  "
            "One pass over xi; bitwise identical for every n_threads.");
    mod.def("openmp_enabled", &nam::openmp_enabled, "Whether the core was built with OpenMP.");
    mod.def("max_threads", &nam::max_threads, "Threads OpenMP would use by default (1 without).");
    mod.def("cpu_features", &cpu_features,
            "Instruction-set extensions this CPU and OS support ({} off x86).");
    mod.def("build_info", &build_info, "Compiler, Eigen version, OpenMP and SIMD of this build.");
}
