// The noise of docs/RNG.md on the CPU: one row of eps at a time, Philox words computed four per
// call, then Box-Muller on whole vectors (Sleef log/sqrt/sin/cos through ATen's Vectorized).
#pragma once

#include <vector>

#include "../core/philox.h"
#include "common.h"

namespace fastelbo {

// Scratch for one row of noise; make one per task (it allocates).
template <typename T>
struct NoiseRow {
  int64_t groups;                   // ceil(D / 4) Philox calls per row
  int64_t padded;                   // groups rounded up to whole vectors
  std::vector<uint32_t> words;      // 4 x padded words
  std::vector<T> lanes;             // 4 x padded normals, lane-major

  explicit NoiseRow(int64_t dim)
      : groups((dim + 3) / 4),
        padded((groups + Vec<T>::size() - 1) / Vec<T>::size() * Vec<T>::size()),
        words(4 * padded, 0u),
        lanes(4 * padded) {}

  // eps[d] for d < 4 groups (the caller's buffer holds at least 4 groups elements) of (row, sample).
  void fill(T* eps, core::PhiloxKey key, int64_t row, int64_t sample) {
    uint32_t* w0 = words.data();
    uint32_t* w1 = w0 + padded;
    uint32_t* w2 = w1 + padded;
    uint32_t* w3 = w2 + padded;
    // Philox on whole arrays of counters, one round at a time: the inner loops vectorize.
    for (int64_t g = 0; g < groups; ++g) {
      uint32_t c[4];
      core::noise_counter(c, g, row, sample);
      w0[g] = c[0];
      w1[g] = c[1];
      w2[g] = c[2];
      w3[g] = c[3];
    }
    uint32_t k0 = key.k0, k1 = key.k1;
    for (int round = 0; round < 10; ++round) {
      for (int64_t g = 0; g < groups; ++g) core::philox_round(w0[g], w1[g], w2[g], w3[g], k0, k1);
      k0 += core::kPhiloxW0;
      k1 += core::kPhiloxW1;
    }
    using M = core::Ops<Vec<T>>;
    constexpr int64_t W = Vec<T>::size();
    alignas(64) T u_a[W], th_a[W], u_b[W], th_b[W];
    T* out = lanes.data();
    for (int64_t g0 = 0; g0 < groups; g0 += W) {
      for (int64_t i = 0; i < W; ++i) {
        u_a[i] = core::box_muller_u<T>(w0[g0 + i]);
        th_a[i] = core::box_muller_theta<T>(w1[g0 + i]);
        u_b[i] = core::box_muller_u<T>(w2[g0 + i]);
        th_b[i] = core::box_muller_theta<T>(w3[g0 + i]);
      }
      const Vec<T> rad_a = (M::c(-2.0) * Vec<T>::loadu(u_a).log()).sqrt();
      const Vec<T> rad_b = (M::c(-2.0) * Vec<T>::loadu(u_b).log()).sqrt();
      const Vec<T> ta = Vec<T>::loadu(th_a), tb = Vec<T>::loadu(th_b);
      (rad_a * ta.cos()).store(out + g0);
      (rad_a * ta.sin()).store(out + padded + g0);
      (rad_b * tb.cos()).store(out + 2 * padded + g0);
      (rad_b * tb.sin()).store(out + 3 * padded + g0);
    }
    for (int64_t g = 0; g < groups; ++g) {
      for (int64_t j = 0; j < 4; ++j) eps[4 * g + j] = out[j * padded + g];
    }
  }
};

// Where a latent kernel's eps comes from: the explicit eps tensor (contiguous (K, R, D), compute
// type) or Philox from the seed. row() gives the D values of (row r, sample k); a task owns one
// Scratch (a padded row of noise and its buffers).
template <typename T>
struct EpsSource {
  const T* eps = nullptr;
  core::PhiloxKey key{0, 0};
  int64_t rows, dim;

  EpsSource(const at::Tensor& explicit_eps, const at::Tensor& seed, int64_t n_rows, int64_t n_dim)
      : rows(n_rows), dim(n_dim) {
    if (explicit_eps.defined()) {
      eps = explicit_eps.const_data_ptr<T>();
    } else {
      key = core::seed_key(*seed.const_data_ptr<int64_t>());
    }
  }

  struct Scratch {
    NoiseRow<T> noise;
    std::vector<T> row;
    Scratch(int64_t dim, int64_t padded) : noise(dim), row(padded, T(0)) {}
  };

  const T* row(Scratch& scratch, int64_t r, int64_t k) const {
    if (eps != nullptr) return eps + (k * rows + r) * dim;
    scratch.noise.fill(scratch.row.data(), key, r, k);
    return scratch.row.data();
  }
};

}  // namespace fastelbo
