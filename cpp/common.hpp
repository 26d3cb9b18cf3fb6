// Shared types and small helpers of the nestedatoms core.
//
// The core works on raw row-major (C-contiguous) float64 buffers, wrapped in Eigen maps, so the
// same code serves NumPy arrays (no copies) and internal scratch.  Errors are reported by throwing
// std::invalid_argument, which pybind11 turns into Python's ValueError.
#pragma once

#include <Eigen/Core>
#include <Eigen/Cholesky>

#include <cmath>
#include <cstddef>
#include <cstring>
#include <initializer_list>
#include <stdexcept>
#include <string>

namespace nam {

using Index = Eigen::Index;
// NumPy's default layout is row-major; matching it lets us map arrays instead of copying them.
using RowMat = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using Mat = Eigen::MatrixXd;
using Vec = Eigen::VectorXd;
using MapRowMat = Eigen::Map<RowMat>;
using CMapRowMat = Eigen::Map<const RowMat>;
using MapVec = Eigen::Map<Vec>;
using CMapVec = Eigen::Map<const Vec>;

constexpr double kLog2Pi = 1.8378770664093454836;  // log(2 pi)
constexpr double kLog2 = 0.69314718055994530942;
constexpr double kLogPi = 1.1447298858494001741;
constexpr double kPi = 3.14159265358979323846;

[[noreturn]] inline void fail(const std::string& message) { throw std::invalid_argument(message); }

// One per-atom input of a kernel: atom g's values are data[g * size, (g + 1) * size).
struct PerAtom {
    const double* data;
    Index size;
};

// Whether atom g's values are bit for bit atom g - 1's in every one of ``inputs``.  Empty atoms
// all sit exactly at the prior with statistics exactly 0 (a merge or a k-means start leaves
// most of L = 30 empty on small data), and the per-atom kernels spent most of their time on
// them; a figure computed from the same bits is the same bits, so a kernel that reuses the
// previous atom's figure where this holds (and keeps its sums in atom order) changes no result.
// List the cheap inputs (scalars) first: the comparison stops at the first difference.
inline bool repeats_previous(Index g, std::initializer_list<PerAtom> inputs) {
    if (g == 0) return false;
    for (const PerAtom& a : inputs)
        if (std::memcmp(a.data + g * a.size, a.data + (g - 1) * a.size,
                        static_cast<size_t>(a.size) * sizeof(double)) != 0)
            return false;
    return true;
}

// Dimensions up to which cholesky_factor runs its unblocked loop: at D = 50, Eigen's blocked LLT
// spends most of its 5.3 us on the bookkeeping of 8-column panels, the loop takes 2.6 us; above
// ~64 the blocked algorithm is the faster.
constexpr Index kUnblockedCholesky = 64;

// Factorises A in place into its lower Cholesky factor L, A = L L' (zeros above the diagonal),
// reading only A's lower triangle, so a matrix that is not symmetric is silently treated as its
// lower half; callers pass matrices that are symmetric by construction (or symmetrised) and
// `what` names the matrix in the error raised when the factorisation breaks down (not positive
// definite, or not finite).
inline void cholesky_in_place(Mat& A, const std::string& what) {
    const Index n = A.rows();
    if (n > kUnblockedCholesky) {
        Eigen::LLT<Mat> llt(A);
        if (llt.info() != Eigen::Success) fail(what + " is not symmetric positive definite");
        A = llt.matrixL();
    } else {
        // column k of L: (A(k:, k) - L(k:, :k) L(k, :k)') / L(k, k), one matrix-vector product
        for (Index k = 0; k < n; ++k) {
            const double d = A(k, k) - A.row(k).head(k).squaredNorm();
            if (!(d > 0.0)) fail(what + " is not symmetric positive definite");
            const double r = std::sqrt(d);
            A(k, k) = r;
            const Index m = n - k - 1;
            if (m > 0) {
                A.col(k).tail(m).noalias() -= A.bottomLeftCorner(m, k) * A.row(k).head(k).transpose();
                A.col(k).tail(m) /= r;
            }
        }
        A.triangularView<Eigen::StrictlyUpper>().setZero();
    }
    const auto diag = A.diagonal();
    for (Index d = 0; d < diag.size(); ++d)
        if (!(diag[d] > 0.0) || !std::isfinite(diag[d]))
            fail(what + " is not symmetric positive definite");
}

// The lower Cholesky factor L of a symmetric positive-definite matrix A = L L' (zeros above the
// diagonal).
struct Cholesky {
    Mat L;
    const Mat& matrixL() const { return L; }
};

// cholesky_in_place on a copy of A.
inline Cholesky checked_llt(const Eigen::Ref<const Mat>& A, const std::string& what) {
    Cholesky f{A};
    cholesky_in_place(f.L, what);
    return f;
}

// log|A| from its Cholesky factor: 2 sum log L_dd (never an explicit determinant, SPEC 7).
inline double logdet_of_factor(const Mat& L) {
    double s = 0.0;
    for (Index d = 0; d < L.rows(); ++d) s += std::log(L(d, d));
    return 2.0 * s;
}

inline double logdet_from_llt(const Cholesky& llt) { return logdet_of_factor(llt.L); }

// A^-1 = L^-T L^-1 from A's Cholesky factor L, made exactly symmetric (the product is not, to
// rounding), so that later factorisations see a symmetric matrix.  L^-1 is formed row by row
// (it is lower triangular): a third of the flops of solving L L' X = I for X, which took three
// quarters of a posterior update at D = 50.
inline Mat spd_inverse(const Mat& L_factor) {
    const Index n = L_factor.rows();
    const RowMat L = L_factor;
    RowMat Linv = RowMat::Zero(n, n);
    for (Index i = 0; i < n; ++i) {
        // row i of L^-1: (e_i - L(i, :i) L^-1(:i, :)) / L(i, i), nonzero in its first i + 1 columns
        if (i > 0)
            Linv.row(i).head(i).noalias() = -(L.row(i).head(i) * Linv.topLeftCorner(i, i)) / L(i, i);
        Linv(i, i) = 1.0 / L(i, i);
    }
    const Mat inv = Linv.transpose() * Linv;
    return 0.5 * (inv + inv.transpose());
}

inline Mat spd_inverse(const Cholesky& llt) { return spd_inverse(llt.L); }

}  // namespace nam
