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

// Lower Cholesky factor of a symmetric positive-definite matrix.  Eigen's LLT only reads the lower
// triangle, so a matrix that is not symmetric would be silently treated as its lower half; callers
// pass matrices that are symmetric by construction (or symmetrised) and `what` names the matrix in
// the error raised when the factorisation breaks down (not positive definite, or not finite).
inline Eigen::LLT<Mat> checked_llt(const Eigen::Ref<const Mat>& A, const std::string& what) {
    Eigen::LLT<Mat> llt(A);
    if (llt.info() != Eigen::Success) fail(what + " is not symmetric positive definite");
    const auto diag = llt.matrixLLT().diagonal();
    for (Index d = 0; d < diag.size(); ++d)
        if (!(diag[d] > 0.0) || !std::isfinite(diag[d]))
            fail(what + " is not symmetric positive definite");
    return llt;
}

// log|A| from the Cholesky factor: 2 sum log L_dd (never an explicit determinant, SPEC 7).
inline double logdet_from_llt(const Eigen::LLT<Mat>& llt) {
    const auto diag = llt.matrixLLT().diagonal();
    double s = 0.0;
    for (Index d = 0; d < diag.size(); ++d) s += std::log(diag[d]);
    return 2.0 * s;
}

}  // namespace nam
