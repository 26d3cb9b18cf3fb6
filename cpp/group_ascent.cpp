#include "group_ascent.hpp"

#include <algorithm>
#include <cmath>
#include <exception>
#include <tuple>

#include "elbo_terms.hpp"
#include "group_step.hpp"
#include "parallel.hpp"
#include "sticks.hpp"

namespace nam {

namespace {

std::pair<double, double> expectations(const ConcentrationSpec& prior, double shape, double rate) {
    if (!prior.learned()) return {prior.fixed, std::log(prior.fixed)};
    return gamma_expectations(shape, rate);
}

// out (K x C) = rho' (K x J) * B (J x C), skipping rho's zeros.  A group-level rho is close to
// one-hot (the composition evidence separates clusters by hundreds of nats, and the group step
// cuts what is below e^-600 of a row's largest to exactly 0), so this reads about one row of B
// per group where the dense product reads K.  Sums run over j in order: deterministic.
template <class Right>
void sparse_transpose_product(const RowMat& rho, const Right& B, RowMat& out) {
    out.setZero(rho.cols(), B.cols());
    for (Index j = 0; j < rho.rows(); ++j)
        for (Index k = 0; k < rho.cols(); ++k) {
            const double r = rho(j, k);
            if (r != 0.0) out.row(k) += r * B.row(j);
        }
}

// Everything one candidate's ascent reads and writes besides its GroupFactors; owned by the
// candidate's thread for the duration of the candidate.
class Ascent {
  public:
    Ascent(const GroupAscentInput& in, const RowMat& Phi) : in_(in), Phi_(Phi) {
        const Index J = in.J, L = in.L, K = in.K;
        R_.resize(K);
        Q_.resize(L, K);
        elog_pi_.resize(K);
        elog_omega_.resize(L, K);
        logits_.resize(J, K);
        old_.resize(J, K);
        if (in.X) {
            const Index q = in.q;
            stats_.resize(K, Phi.cols());
            n_.resize(K);
            s1_.resize(K, q);
            s2_.resize(K, q * q);
            ell_x_.resize(J, K);
        }
    }

    void run(GroupFactors& f) {
        const Index L = in_.L, K = in_.K, q = in_.q;
        f.v_a.resize(K - 1, 1);
        f.v_b.resize(K - 1, 1);
        f.u_a.resize(L - 1, K);
        f.u_b.resize(L - 1, K);
        if (in_.X) {
            f.mx.resize(K, q);
            f.lamx.resize(K);
            f.Wx.resize(K, q * q);
            f.nux.resize(K);
            W0inv_ = CMapRowMat(in_.x_prior.W0inv, q, q) * f.x_scale;
            prior_ = in_.x_prior;
            prior_.lam0 = in_.x_prior.lam0 * f.x_scale;
            prior_.W0inv = W0inv_.data();
        }
        f.H_rho = categorical_entropy(f.rho.data(), f.rho.size());
        global_blocks(f);
        f.n_iter = 0;
        for (int it = 0; it < in_.max_iter; ++it) {
            old_ = f.rho;
            group_step(f);
            ++f.n_iter;
            global_blocks(f);
            if ((f.rho - old_).cwiseAbs().maxCoeff() < in_.tol) break;
        }
        f.elbo = group_elbo(f);
    }

  private:
    // The blocks of one pass after q(S), in the order of the fit's sweep.
    void global_blocks(GroupFactors& f) {
        const Index L = in_.L, K = in_.K;
        R_ = f.rho.colwise().sum().transpose();
        const double e_alpha = expectations(in_.alpha, f.alpha_shape, f.alpha_rate).first;
        update_sticks(R_.data(), K, 1, e_alpha, f.v_a.data(), f.v_b.data());
        cell_stick_counts(f.rho);
        const double e_beta = expectations(in_.beta, f.beta_shape, f.beta_rate).first;
        update_sticks(Q_.data(), L, K, e_beta, f.u_a.data(), f.u_b.data());
        if (in_.alpha.learned())
            std::tie(f.alpha_shape, f.alpha_rate) = update_concentration(
                in_.alpha.shape, in_.alpha.rate, f.v_a.data(), f.v_b.data(), K - 1);
        if (in_.beta.learned())
            std::tie(f.beta_shape, f.beta_rate) = update_concentration(
                in_.beta.shape, in_.beta.rate, f.u_a.data(), f.u_b.data(), (L - 1) * K);
        if (in_.X) {
            x_stats(f);
            nw_posterior(n_.data(), s1_.data(), s2_.data(), K, in_.x_centre, prior_, f.mx.data(),
                         f.lamx.data(), f.Wx.data(), f.nux.data());
        }
    }

    // Q (L x K) = counts' rho, through its transpose (the sparse product's orientation).
    void cell_stick_counts(const RowMat& rho) {
        sparse_transpose_product(rho, CMapRowMat(in_.counts, in_.J, in_.L), Qt_);
        Q_ = Qt_.transpose();
    }

    void x_stats(const GroupFactors& f) {
        sparse_transpose_product(f.rho, Phi_, stats_);
        unpack_stats(stats_, in_.q, n_.data(), s1_.data(), s2_.data());
    }

    NWView x_view(const GroupFactors& f) const {
        return {f.mx.data(), f.lamx.data(), f.Wx.data(), f.nux.data(), in_.K, in_.q};
    }

    void group_step(GroupFactors& f) {
        const Index L = in_.L, K = in_.K;
        expected_log_stick_weights(f.v_a.data(), f.v_b.data(), K - 1, 1, elog_pi_.data());
        expected_log_stick_weights(f.u_a.data(), f.u_b.data(), L - 1, K, elog_omega_.data());
        logits_.noalias() = CMapRowMat(in_.counts, in_.J, L) * elog_omega_;
        logits_.rowwise() += elog_pi_.transpose();
        if (in_.X) {
            const NWView v = x_view(f);
            const GaussianAtoms atoms = prepare_atoms(v, "x atoms' W");
            ell_x_.noalias() = Phi_ * loglik_coefficients(atoms, v, in_.x_centre);
            logits_ += ell_x_;
        }
        f.H_rho = normalise_group_logits(logits_, f.rho);
    }

    // Every ELBO term of the group level (model section 6), as _steps.elbo_terms writes them.
    double group_elbo(const GroupFactors& f) {
        const Index L = in_.L, K = in_.K;
        double t = 0.0;
        if (in_.X) {
            x_stats(f);
            const NWView v = x_view(f);
            t += nw_loglik_from_stats(n_.data(), s1_.data(), s2_.data(), in_.x_centre, v);
            t += nw_prior_term(v, prior_);
            t += nw_entropy(v);
        }
        expected_log_stick_weights(f.v_a.data(), f.v_b.data(), K - 1, 1, elog_pi_.data());
        expected_log_stick_weights(f.u_a.data(), f.u_b.data(), L - 1, K, elog_omega_.data());
        R_ = f.rho.colwise().sum().transpose();
        t += R_.dot(elog_pi_);                                     // log p(S)
        cell_stick_counts(f.rho);
        t += (Q_.array() * elog_omega_.array()).sum();                   // log p(M)
        const auto [e_a, elog_a] = expectations(in_.alpha, f.alpha_shape, f.alpha_rate);
        const auto [e_b, elog_b] = expectations(in_.beta, f.beta_shape, f.beta_rate);
        t += stick_prior_term(f.v_a.data(), f.v_b.data(), K - 1, e_a, elog_a);
        t += stick_prior_term(f.u_a.data(), f.u_b.data(), (L - 1) * K, e_b, elog_b);
        t += beta_entropy(f.v_a.data(), f.v_b.data(), K - 1);
        t += beta_entropy(f.u_a.data(), f.u_b.data(), (L - 1) * K);
        if (in_.alpha.learned())
            t += gamma_prior_term(in_.alpha.shape, in_.alpha.rate, f.alpha_shape, f.alpha_rate) +
                 gamma_entropy(f.alpha_shape, f.alpha_rate);
        if (in_.beta.learned())
            t += gamma_prior_term(in_.beta.shape, in_.beta.rate, f.beta_shape, f.beta_rate) +
                 gamma_entropy(f.beta_shape, f.beta_rate);
        return t + f.H_rho;
    }

    const GroupAscentInput& in_;
    const RowMat& Phi_;
    NWPrior prior_{};
    RowMat W0inv_;
    Vec R_, elog_pi_;
    RowMat Q_, Qt_, elog_omega_, logits_, old_, stats_, s1_, s2_, ell_x_;
    Vec n_;
};

}  // namespace

void group_ascent(const GroupAscentInput& in, std::vector<GroupFactors>& candidates,
                  int n_threads) {
    const Index B = static_cast<Index>(candidates.size());
    if (B == 0) return;
    // The x features phi(x_j) (packed outer products about the centre), shared read-only.
    RowMat Phi;
    if (in.X) {
        const Index F = packed_size(in.q) + in.q + 1;
        Phi.resize(in.J, F);
        for (Index j = 0; j < in.J; ++j)
            packed_features(in.X + j * in.q, in.x_centre, in.q, Phi.row(j).data());
    }
    const int threads =
        static_cast<int>(std::min<Index>(static_cast<Index>(resolve_threads(n_threads)), B));
    std::vector<std::exception_ptr> errors(static_cast<size_t>(B));
#ifdef NESTEDATOMS_OPENMP
#pragma omp parallel num_threads(threads)
#endif
    {
        // One Ascent per thread, constructed inside the region: its scratch is the thread's own.
        Ascent ascent(in, Phi);
#ifdef NESTEDATOMS_OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
        for (Index b = 0; b < B; ++b) {
            try {
                ascent.run(candidates[static_cast<size_t>(b)]);
            } catch (...) {
                errors[static_cast<size_t>(b)] = std::current_exception();
            }
        }
    }
    (void)threads;
    for (const auto& e : errors)
        if (e) std::rethrow_exception(e);
}

}  // namespace nam
