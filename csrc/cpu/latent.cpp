// The Gaussian latent and the analytic KL on the CPU: one pass forward, one pass backward, rows
// split across threads (at::parallel_for), each row's D columns in SIMD vectors.
//
// Forward, with sigma, log sigma from `scale` by param and eps from Philox (or the eps tensor):
//     z     = mu + sigma eps
//     log q = sum_d [-eps^2/2 - log sigma] - D log(2 pi)/2
//     log p = sum_d [-u^2/2 - log sigma_p] - D log(2 pi)/2,   u = (z - mu_p) / sigma_p
//     kl    = sum_d [(e^(2r) - 1 - 2r)/2 + delta^2/2],  r = log sigma - log sigma_p,
//             delta = (mu - mu_p) / sigma_p      (standard prior: mu_p = 0, sigma_p = 1)
// Backward, given gz = dL/dz, gq = dL/dlog q, gp = dL/dlog p, gk = dL/dkl:
//     g_k   = gz_k - gp_k u_k / sigma_p  [ - gq_k eps_k / sigma  with stl ]
//     dL/dmu          = sum_k g_k + gk delta / sigma_p
//     dL/dlog sigma   = sigma sum_k g_k eps_k  [ - sum_k gq_k  without stl ] + gk expm1(2r)
//     dL/dmu_p        = sum_k gp_k u_k / sigma_p - gk delta / sigma_p
//     dL/dlog sigma_p = sum_k gp_k (u_k^2 - 1) - gk (expm1(2r) + delta^2)
// and dL/ds = dsigma/ds sum_k g_k eps_k + dlog sigma/ds [gk expm1(2r) - sum_k gq_k], which is
// dL/dlog sigma * dlog sigma/ds, taken apart so that sigma = inf (softplus, dlog sigma/ds = 0)
// passes z's gradient on as autograd does; dL/ds_p = dL/dlog sigma_p * dlog sigma_p/ds_p. eps is
// regenerated from the seed in backward, never stored.
#include <ATen/CPUGeneratorImpl.h>

#include <mutex>
#include <vector>

#include "../binding/checks.h"
#include "../binding/event_dims.h"
#include "../binding/plan.h"
#include "common.h"
#include "latent_rows.h"
#include "latent_flat.h"
#include "noise.h"
#include "ops.h"

namespace fastelbo {
namespace {

// The seed torch.randint(0, 2**63 - 1, (), dtype=torch.int64) draws from the default CPU generator
// (ATen's uniform_int_from_to_distribution: one random64() word, modulo the range), which is
// fastelbo.rng.draw_seed: a call that draws its seed here leaves the generator where a call given
// draw_seed()'s seed would, with the same noise. tests/test_rng.py holds the two to each other.
Tensor draw_default_seed() {
  constexpr uint64_t kSeedRange = (uint64_t{1} << 63) - 1;
  auto* generator = at::check_generator<at::CPUGeneratorImpl>(at::detail::getDefaultCPUGenerator());
  uint64_t word;
  {
    std::lock_guard<std::mutex> lock(generator->mutex_);
    word = generator->random64();
  }
  Tensor seed = at::empty({}, at::TensorOptions().dtype(at::kLong));
  *seed.data_ptr<int64_t>() = static_cast<int64_t>(word % kSeedRange);
  return seed;
}

// One sample (K = 1) on the per-row path: each row in tiles of kTileColumns columns, every term of a
// vector of columns computed where it is used (no per-row buffers of terms), the noise drawn per
// tile, so a long row's working set stays in L1 (a 16384-column row's buffers were most of L2).
// The tiles keep the columns' order within each vector lane, so the sums are those of the
// buffered path bit for bit. Not for a prior shared across rows, whose terms the buffered path
// computes once for all rows.
constexpr int64_t kTileColumns = 512;

bool tiled_rows(const LatentRows& rows, int64_t k_samples) {
  return k_samples == 1 && (!rows.has_prior || !(rows.prior_shared(2) || rows.prior_shared(3)));
}

// A task's noise tile: eps of columns [c0, c0 + n) of (row r, sample 0), or the explicit eps there.
// Rows stored channels-last (source.channels > 1) draw the whole row at its first tile: a tile's
// columns are then scattered over the row's logical order.
template <typename T>
struct NoiseTile {
  NoiseBlock<T> noise;
  std::vector<T> buffer;
  bool whole_rows;
  // (a block sized for one tile: fill_columns asks for at most kTileColumns / 4 calls)
  explicit NoiseTile(const EpsSource<T>& source)
      : noise(tile_dim(source), source.channels),
        buffer(4 * ((tile_dim(source) + 3) / 4)),
        whole_rows(source.channels > 1) {}
  static int64_t tile_dim(const EpsSource<T>& source) {
    return source.channels > 1 ? source.dim : std::min(source.dim, kTileColumns);
  }
  const T* columns(const EpsSource<T>& source, int64_t r, int64_t c0, int64_t n) {
    if (source.eps != nullptr) return source.eps + r * source.dim + c0;
    if (whole_rows) {
      if (c0 == 0) noise.fill(buffer.data(), source.dim, source.key, r, 1, 0);
      return buffer.data() + c0;
    }
    noise.fill_columns(buffer.data(), source.key, r, 0, c0 / 4, (n + 3) / 4);
    return buffer.data();
  }
};

template <typename scalar_t>
void gaussian_latent_forward_kernel(const LatentRows& rows, const Tensor& eps, const Tensor& seed, int64_t param,
                                    int64_t k_samples, int64_t channels, Tensor& z, Tensor& log_q, Tensor& log_p,
                                    Tensor& kl) {
  using T = compute_t<scalar_t>;
  using V = Vec<T>;
  constexpr int64_t W = V::size();
  const RowInputs<scalar_t> in(rows);
  const int64_t R = rows.rows(), D = rows.dim, P = padded_dim(D, W);
  const bool has_prior = rows.has_prior;
  const EpsSource<T> eps_source(eps, seed, R, D, channels);
  if constexpr (std::is_same_v<scalar_t, T>) {
    if (flat_rows<scalar_t>(rows)) {
      latent_forward_flat<T>(flat_inputs(in), eps_source, static_cast<int>(param), k_samples, R, D, z.data_ptr<T>(),
                             log_q.data_ptr<T>(), log_p.data_ptr<T>(), kl.data_ptr<T>());
      return;
    }
  }
  const T half_log_2pi_d = static_cast<T>(static_cast<double>(D) * core::kHalfLog2Pi);
  scalar_t* z_ptr = z.data_ptr<scalar_t>();
  T* lq_ptr = log_q.data_ptr<T>();
  T* lp_ptr = log_p.data_ptr<T>();
  T* kl_ptr = kl.data_ptr<T>();
  // One sample at one vector of columns: z = mu + sigma eps stored, -eps^2/2 - log sigma and
  // -u^2/2 - log sigma_p (u = (z - mu_p) / sigma_p; the standard prior: -z^2/2) added to the sums.
  auto sample = [&](const ColumnTerms<T>& c, const V& e, scalar_t* z_at, auto n, V& lq_acc, V& lp_acc) {
    const V zv = c.mu + c.sigma * e;
    store<T>(z_at, 1, zv, n);
    lq_acc += first(V(T(-0.5)) * e * e - c.log_sigma, n);
    if (has_prior) {
      const V u = (zv - c.pmu) * c.inv_psigma;
      lp_acc += first(V(T(-0.5)) * u * u - c.plog_sigma, n);
    } else {
      lp_acc += first(V(T(-0.5)) * zv * zv, n);
    }
  };
  if (tiled_rows(rows, k_samples)) {
    at::parallel_for(0, R, grain_rows(D * 3), [&](int64_t begin, int64_t end) {
      NoiseTile<T> tile(eps_source);
      for (int64_t r = begin; r < end; ++r) {
        const RowPointers<scalar_t> at(in, r, has_prior);
        V kl_acc(T(0)), lq_acc(T(0)), lp_acc(T(0));
        for (int64_t c0 = 0; c0 < D; c0 += kTileColumns) {
          const int64_t cols = std::min(kTileColumns, D - c0);
          const T* e_src = tile.columns(eps_source, r, c0, cols);
          for_vectors<W>(cols, [&](int64_t jj, auto n) {
            const int64_t j = c0 + jj;
            const ColumnTerms<T> c = column_terms<T>(in, at, j, n, static_cast<int>(param), has_prior, false);
            kl_acc += first(kl_term<T>(c, has_prior), n);
            sample(c, V::loadu(e_src + jj, n), z_ptr + r * D + j, n, lq_acc, lp_acc);
          });
        }
        kl_ptr[r] = hsum(kl_acc);
        lq_ptr[r] = hsum(lq_acc) - half_log_2pi_d;
        lp_ptr[r] = hsum(lp_acc) - half_log_2pi_d;
      }
    });
    return;
  }
  at::parallel_for(0, R, grain_rows(D * (k_samples + 2)), [&](int64_t begin, int64_t end) {
    RowTerms<T> t(P);
    typename EpsSource<T>::Scratch scratch(eps_source, P, k_samples);
    for (int64_t r = begin; r < end; ++r) {
      t.read(in, r, D, static_cast<int>(param), has_prior, false);
      V kl_acc(T(0));
      for_vectors<W>(D, [&](int64_t j, auto n) { kl_acc += first(kl_term<T>(t.column(j), has_prior), n); });
      kl_ptr[r] = hsum(kl_acc);
      for (int64_t k = 0; k < k_samples; ++k) {
        const int64_t out_row = k * R + r;
        const T* e_src = eps_source.row(scratch, r, k);
        V lq_acc(T(0)), lp_acc(T(0));
        for_vectors<W>(D, [&](int64_t j, auto n) {
          sample(t.column(j), V::loadu(e_src + j, n), z_ptr + out_row * D + j, n, lq_acc, lp_acc);
        });
        lq_ptr[out_row] = hsum(lq_acc) - half_log_2pi_d;
        lp_ptr[out_row] = hsum(lp_acc) - half_log_2pi_d;
      }
    }
  });
}

// Incoming gradients of the latent's outputs as strided (K, R, D) / (K, R) / (R,) views.
struct LatentGrads {
  Tensor gz, gq, gp, gk;
  LatentGrads(const OptTensor& grad_z, const OptTensor& grad_log_q, const OptTensor& grad_log_p,
              const OptTensor& grad_kl, int64_t K, int64_t R, int64_t D, at::ScalarType compute) {
    auto view = [&](const OptTensor& g, at::IntArrayRef shape) -> Tensor {
      if (!g.has_value() || !g->defined()) return Tensor();
      return as_dtype(*g, compute).reshape(shape);
    };
    gz = view(grad_z, {K, R, D});
    gq = view(grad_log_q, {K, R});
    gp = view(grad_log_p, {K, R});
    gk = view(grad_kl, {R});
  }
};

template <typename scalar_t>
void gaussian_latent_backward_kernel(const LatentRows& rows, const LatentGrads& g, const Tensor& eps,
                                     const Tensor& seed, int64_t param, int64_t K, bool stl, int64_t channels,
                                     PosteriorGrads& out) {
  using T = compute_t<scalar_t>;
  using V = Vec<T>;
  constexpr int64_t W = V::size();
  const RowInputs<scalar_t> in(rows);
  const int64_t R = rows.rows(), D = rows.dim, P = padded_dim(D, W);
  const bool has_prior = rows.has_prior;
  const EpsSource<T> eps_source(eps, seed, R, D, channels);
  const T* gz = g.gz.defined() ? g.gz.const_data_ptr<T>() : nullptr;
  const T* gq = g.gq.defined() ? g.gq.const_data_ptr<T>() : nullptr;
  const T* gp = g.gp.defined() ? g.gp.const_data_ptr<T>() : nullptr;
  const T* gk = g.gk.defined() ? g.gk.const_data_ptr<T>() : nullptr;
  const int64_t gz_sk = gz ? g.gz.stride(0) : 0, gz_sr = gz ? g.gz.stride(1) : 0, gz_sd = gz ? g.gz.stride(2) : 0;
  const int64_t gq_sk = gq ? g.gq.stride(0) : 0, gq_sr = gq ? g.gq.stride(1) : 0;
  const int64_t gp_sk = gp ? g.gp.stride(0) : 0, gp_sr = gp ? g.gp.stride(1) : 0;
  const int64_t gk_sr = gk ? g.gk.stride(0) : 0;
  if constexpr (std::is_same_v<scalar_t, T>) {
    // A gz with one value per row (expanded along it, as z.sum()'s or z.mean(-1)'s gradient) is
    // read through its strides. Another gz that is not contiguous is copied on short rows: the
    // per-row path below costs more than the copy there (at 256 x 8 the backward took 22.6 us
    // through the per-row path, 8.6 us with the copy; at 64 x 1024 the two paths cost the same).
    const bool flat_path = flat_rows<scalar_t>(rows);
    const bool gz_per_row = gz && !g.gz.is_contiguous() && (D == 1 || gz_sd == 0);
    const Tensor flat_gz =
        flat_path && gz && !gz_per_row && !g.gz.is_contiguous() && D < 4 * W ? g.gz.contiguous() : g.gz;
    if (flat_path && (!gz || gz_per_row || flat_gz.is_contiguous())) {
      const FlatGrads<T> flat{gz ? flat_gz.const_data_ptr<T>() : nullptr, gz_per_row, gz_sk, gz_sr, gq, gq_sk, gq_sr,
                              gp, gp_sk, gp_sr, gk, gk_sr};
      latent_backward_flat<T>(flat_inputs(in), eps_source, static_cast<int>(param), K, R, D, stl, flat,
                              flat_out_grads<T>(out, R));
      return;
    }
  }
  const auto grads = out.writer<scalar_t>();
  const int64_t block = out.block, blocks = out.blocks;
  const int iparam = static_cast<int>(param);

  // Sample k's part at one vector of columns: g_k = gz_k - gp_k u / sigma_p [- gq_k eps / sigma with
  // stl], and the prior's gp_k u, gp_k (u^2 - 1).
  struct SampleGrad {
    V grad, d_pmu, d_plog;
  };
  auto sample_grad = [&](const ColumnTerms<T>& c, const V& e, V grad, T gp_k, T gq_k) {
    SampleGrad out{grad, V(T(0)), V(T(0))};
    if (gp) {
      const V zv = c.mu + c.sigma * e;
      if (has_prior) {
        const V u = (zv - c.pmu) * c.inv_psigma;
        out.grad = out.grad - V(gp_k) * u * c.inv_psigma;
        out.d_pmu = V(gp_k) * u;
        out.d_plog = V(gp_k) * (u * u - V(T(1)));
      } else {
        out.grad = out.grad - V(gp_k) * zv;
      }
    }
    if (gq && stl) out.grad = out.grad - V(gq_k) * e / c.sigma;
    return out;
  };
  // The gradients at one vector of columns of row r (block b) from the samples' sums.
  auto finish = [&](int64_t b, int64_t r, int64_t j, auto n, const ColumnTerms<T>& c, V g_mu, const V& sum_ze, V g_pmu,
                    V g_plog, T acc_q, T gk_r) {
    // dL/dlog sigma but for the path through z, which reaches s as d sigma/ds sum_k g_k eps_k.
    V g_lsig = V(T(0)) - V(acc_q);
    if (gk) {
      const V gkv(gk_r);
      if (has_prior) {
        const V delta = (c.mu - c.pmu) * c.inv_psigma;
        const V em = vexpm1(V(T(2)) * (c.log_sigma - c.plog_sigma));
        g_pmu = g_pmu - gkv * delta;
        g_plog = g_plog - gkv * (em + delta * delta);
        g_mu = g_mu + gkv * delta * c.inv_psigma;
        g_lsig = g_lsig + gkv * em;
      } else {
        g_mu = g_mu + gkv * c.mu;
        g_lsig = g_lsig + gkv * vexpm1(V(T(2)) * c.log_sigma);
      }
    }
    grads.write(r, j, n, g_mu, c.dsigma * sum_ze + g_lsig * c.dlog);
    if (has_prior) grads.write_prior(b, r, j, n, g_pmu * c.inv_psigma, g_plog * c.pdlog);
  };

  // Blocks of rows are fixed (not per thread), so results do not depend on the thread count.
  if (tiled_rows(rows, K)) {
    at::parallel_for(0, blocks, 1, [&](int64_t b_begin, int64_t b_end) {
      NoiseTile<T> tile(eps_source);
      for (int64_t b = b_begin; b < b_end; ++b) {
        for (int64_t r = b * block; r < std::min(R, (b + 1) * block); ++r) {
          const RowPointers<scalar_t> at(in, r, has_prior);
          const T gp_0 = gp ? gp[r * gp_sr] : T(0);
          const T gq_0 = gq ? gq[r * gq_sr] : T(0);
          const T acc_q = gq && !stl ? T(0) + gq_0 : T(0);
          const T gk_r = gk ? gk[r * gk_sr] : T(0);
          for (int64_t c0 = 0; c0 < D; c0 += kTileColumns) {
            const int64_t cols = std::min(kTileColumns, D - c0);
            const T* e_src = tile.columns(eps_source, r, c0, cols);
            for_vectors<W>(cols, [&](int64_t jj, auto n) {
              const int64_t j = c0 + jj;
              const ColumnTerms<T> c = column_terms<T>(in, at, j, n, iparam, has_prior, true);
              const V e = V::loadu(e_src + jj, n);
              const V gz_v = gz ? load<T>(gz + r * gz_sr + j * gz_sd, gz_sd, n) : V(T(0));
              const SampleGrad g = sample_grad(c, e, gz_v, gp_0, gq_0);
              // (0 + x: the buffered path's sums of one sample, bit for bit)
              finish(b, r, j, n, c, V(T(0)) + g.grad, V(T(0)) + g.grad * e, V(T(0)) + g.d_pmu, V(T(0)) + g.d_plog,
                     acc_q, gk_r);
            });
          }
        }
      }
    });
    return;
  }
  at::parallel_for(0, blocks, 1, [&](int64_t b_begin, int64_t b_end) {
    RowTerms<T> t(P);
    typename EpsSource<T>::Scratch scratch(eps_source, P, K);
    std::vector<T> acc_z(P), acc_ze(P), acc_pmu(P), acc_plog(P);
    for (int64_t b = b_begin; b < b_end; ++b) {
      for (int64_t r = b * block; r < std::min(R, (b + 1) * block); ++r) {
        t.read(in, r, D, iparam, has_prior, true);
        std::fill(acc_z.begin(), acc_z.end(), T(0));
        std::fill(acc_ze.begin(), acc_ze.end(), T(0));
        std::fill(acc_pmu.begin(), acc_pmu.end(), T(0));
        std::fill(acc_plog.begin(), acc_plog.end(), T(0));
        T acc_q = 0;
        for (int64_t k = 0; k < K; ++k) {
          const T* e_src = eps_source.row(scratch, r, k);
          const T gp_k = gp ? gp[k * gp_sk + r * gp_sr] : T(0);
          const T gq_k = gq ? gq[k * gq_sk + r * gq_sr] : T(0);
          if (gq && !stl) acc_q += gq_k;
          for_vectors<W>(D, [&](int64_t j, auto n) {
            const V e = V::loadu(e_src + j, n);
            const V gz_v = gz ? load<T>(gz + k * gz_sk + r * gz_sr + j * gz_sd, gz_sd, n) : V(T(0));
            const SampleGrad g = sample_grad(t.column(j), e, gz_v, gp_k, gq_k);
            if (has_prior) {
              (V::loadu(acc_pmu.data() + j) + g.d_pmu).store(acc_pmu.data() + j);
              (V::loadu(acc_plog.data() + j) + g.d_plog).store(acc_plog.data() + j);
            }
            (V::loadu(acc_z.data() + j) + g.grad).store(acc_z.data() + j);
            (V::loadu(acc_ze.data() + j) + g.grad * e).store(acc_ze.data() + j);
          });
        }
        const T gk_r = gk ? gk[r * gk_sr] : T(0);
        for_vectors<W>(D, [&](int64_t j, auto n) {
          finish(b, r, j, n, t.column(j), V::loadu(acc_z.data() + j), V::loadu(acc_ze.data() + j),
                 V::loadu(acc_pmu.data() + j), V::loadu(acc_plog.data() + j), acc_q, gk_r);
        });
      }
    }
  });
}

// The flat forward (one event dim; `channels` > 1: its columns stored channels-last, see
// csrc/binding/event_dims.h), after the entry's checks.
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> gaussian_latent_flat_cpu(
    const Tensor& mu, const Tensor& scale, const OptTensor& prior_mu, const OptTensor& prior_scale,
    const OptTensor& eps, const OptTensor& seed, int64_t param, int64_t n_samples, bool stl, int64_t channels) {
  const bool draws = !(eps.has_value() && eps->defined()) && !(seed.has_value() && seed->defined());
  Tensor drawn = draws ? draw_default_seed() : at::empty({0}, mu.options().dtype(at::kLong));
  LatentRows rows(mu, scale, prior_mu, prior_scale);
  const at::ScalarType compute = compute_dtype(rows.dtype);
  auto batch = mu.sizes().slice(0, mu.dim() - 1);
  const int64_t k_samples = sample_count(n_samples);
  std::vector<int64_t> z_shape = with_samples(n_samples, mu.sizes());
  std::vector<int64_t> lq_shape = with_samples(n_samples, batch);
  Tensor z = at::empty(z_shape, mu.options().dtype(rows.dtype));
  Tensor log_q = at::empty(lq_shape, mu.options().dtype(compute));
  Tensor log_p = at::empty(lq_shape, mu.options().dtype(compute));
  Tensor kl = at::empty(batch, mu.options().dtype(compute));
  if (log_q.numel() > 0) {
    Tensor eps_c = eps.has_value() && eps->defined() ? eps->to(compute).contiguous() : Tensor();
    Tensor seed_t = draws ? drawn : defined_or_empty(seed);
    FASTELBO_DISPATCH_FLOAT(rows.dtype, "fastelbo_gaussian_latent_cpu", [&] {
      gaussian_latent_forward_kernel<scalar_t>(rows, eps_c, seed_t, param, k_samples, channels, z, log_q, log_p, kl);
    });
  }
  return {as_dtype(z, mu.scalar_type()), log_q, log_p, kl, drawn};
}

// The flat backward (one event dim, `channels` as gaussian_latent_flat_cpu's).
std::tuple<Tensor, Tensor, Tensor, Tensor> gaussian_latent_backward_flat_cpu(
    const OptTensor& grad_z, const OptTensor& grad_log_q, const OptTensor& grad_log_p, const OptTensor& grad_kl,
    const Tensor& mu, const Tensor& scale, const OptTensor& prior_mu, const OptTensor& prior_scale,
    const OptTensor& eps, const OptTensor& seed, int64_t param, int64_t n_samples, bool stl, int64_t channels) {
  LatentRows rows(mu, scale, prior_mu, prior_scale);
  const int64_t k_samples = sample_count(n_samples);
  PosteriorGrads out(rows, mu, grain_rows(rows.dim * (k_samples + 2)));
  if (mu.numel() > 0) {
    const int64_t R = rows.rows(), D = rows.dim;
    LatentGrads grads(grad_z, grad_log_q, grad_log_p, grad_kl, k_samples, R, D, compute_dtype(rows.dtype));
    Tensor eps_c = eps.has_value() && eps->defined() ? eps->to(compute_dtype(rows.dtype)).contiguous() : Tensor();
    Tensor seed_t = defined_or_empty(seed);
    FASTELBO_DISPATCH_FLOAT(rows.dtype, "fastelbo_gaussian_latent_backward_cpu", [&] {
      gaussian_latent_backward_kernel<scalar_t>(rows, grads, eps_c, seed_t, param, k_samples, stl, channels, out);
    });
  }
  return out.finish(mu, scale, prior_mu, prior_scale);
}

}  // namespace

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> gaussian_latent_cpu(
    const Tensor& mu, const Tensor& scale, const OptTensor& prior_mu, const OptTensor& prior_scale,
    const OptTensor& eps, const OptTensor& seed, int64_t param, int64_t n_samples, bool stl, int64_t event_dims) {
  checks::posterior(mu, scale, prior_mu, prior_scale, param, "fastelbo.gaussian_latent");
  checks::noise(mu, eps, seed, n_samples, "fastelbo.gaussian_latent", /*may_draw=*/true);
  event_dims::check(mu, event_dims, "fastelbo.gaussian_latent");
  if (event_dims > 1) {  // one dim of D = their product (csrc/binding/event_dims.h)
    return event_dims::latent_forward(gaussian_latent_flat_cpu, mu, scale, prior_mu, prior_scale, eps, seed, param,
                                      n_samples, stl, event_dims);
  }
  return gaussian_latent_flat_cpu(mu, scale, prior_mu, prior_scale, eps, seed, param, n_samples, stl, 1);
}

std::tuple<Tensor, Tensor, Tensor, Tensor> gaussian_latent_backward_cpu(
    const OptTensor& grad_z, const OptTensor& grad_log_q, const OptTensor& grad_log_p, const OptTensor& grad_kl,
    const Tensor& mu, const Tensor& scale, const OptTensor& prior_mu, const OptTensor& prior_scale,
    const OptTensor& eps, const OptTensor& seed, int64_t param, int64_t n_samples, bool stl, int64_t event_dims) {
  event_dims::check(mu, event_dims, "fastelbo.gaussian_latent_backward");
  if (event_dims > 1) {  // one dim of D = their product (csrc/binding/event_dims.h)
    return event_dims::latent_backward(gaussian_latent_backward_flat_cpu, grad_z, grad_log_q, grad_log_p, grad_kl, mu,
                                       scale, prior_mu, prior_scale, eps, seed, param, n_samples, stl, event_dims);
  }
  return gaussian_latent_backward_flat_cpu(grad_z, grad_log_q, grad_log_p, grad_kl, mu, scale, prior_mu, prior_scale,
                                           eps, seed, param, n_samples, stl, 1);
}

}  // namespace fastelbo
