// Thin OpenMP shim: the core builds and runs single-threaded when OpenMP is unavailable.
#pragma once

#ifdef NESTEDATOMS_OPENMP
#include <omp.h>
#endif

namespace nam {

inline bool openmp_enabled() {
#ifdef NESTEDATOMS_OPENMP
    return true;
#else
    return false;
#endif
}

inline int max_threads() {
#ifdef NESTEDATOMS_OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

// n_threads <= 0 means "all available" (OpenMP's current default).
inline int resolve_threads(int n_threads) {
    if (!openmp_enabled()) return 1;
    return n_threads > 0 ? n_threads : max_threads();
}

}  // namespace nam
