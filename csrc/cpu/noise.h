// The noise of docs/RNG.md on the CPU: blocks of rows of eps at a time, Philox words computed four
// per call, then Box-Muller on whole vectors (Sleef log/sqrt/sin/cos through ATen's Vectorized;
// float32 on AVX-512: noise_avx512.h, in registers from the counters to the normals).
#pragma once

#include <algorithm>
#include <type_traits>
#include <vector>

#include "../core/philox.h"
#include "common.h"
#include "noise_avx512.h"

namespace fastelbo {

// Noise for a block of consecutive rows of one sample. Philox runs on whole arrays of counters
// and Box-Muller on whole vectors across the block's rows, so a short row (D = 8: two Philox
// calls) does not pay a vector of Sleef log / sin / cos for two lanes. Each element's value is
// that of its own (row, group, lane) counter, whatever the block: the noise does not depend on
// the blocking (nor on threads). Make one per task (it allocates).
//
// `channels` = C > 1: the rows are stored channels-last (csrc/binding/event_dims.h): row column
// s C + c holds logical element d = c S + s (S = D / C), whose noise it gets.
template <typename T>
struct NoiseBlock {
  static constexpr int64_t kTargetGroups = 64;  // Philox calls per block when rows are short
  int64_t dim;
  int64_t channels;                        // 1: columns in logical order
  int64_t groups;                          // ceil(D / 4) Philox calls per row
  int64_t max_rows;                        // rows per block
  int64_t padded;                          // max_rows * groups rounded up to whole vectors
  std::vector<uint32_t> words;             // 4 x padded words (the portable path)
  std::vector<T> lanes;                    // 4 x padded normals, lane-major
  std::vector<uint32_t> group_of, row_of;  // call i of a block: column group and row offset (AVX-512)

#if defined(CPU_CAPABILITY_AVX512)
  static constexpr bool kInRegisters = std::is_same_v<T, float>;
#else
  static constexpr bool kInRegisters = false;
#endif

  explicit NoiseBlock(int64_t n_dim, int64_t n_channels = 1)
      : dim(n_dim),
        channels(n_channels),
        groups((n_dim + 3) / 4),
        max_rows(std::max<int64_t>(1, kTargetGroups / std::max<int64_t>(groups, 1))),
        padded((max_rows * groups + Vec<T>::size() - 1) / Vec<T>::size() * Vec<T>::size()),
        words(kInRegisters ? 0 : 4 * padded, 0u),
        lanes(4 * padded),
        group_of(kInRegisters ? padded : 0, 0u),
        row_of(kInRegisters ? padded : 0, 0u) {
    for (int64_t at = 0; at < static_cast<int64_t>(group_of.size()) && groups > 0; ++at) {
      group_of[at] = static_cast<uint32_t>(at % groups);
      row_of[at] = static_cast<uint32_t>(at / groups);
    }
  }

  // eps of rows row0 .. row0 + n_rows - 1 (n_rows <= max_rows) of `sample`: row i's D values at
  // out + i * stride.
  void fill(T* out, int64_t stride, core::PhiloxKey key, int64_t row0, int64_t n_rows, int64_t sample) {
    if (storage_order_in_registers()) {
      for (int64_t i = 0; i < n_rows; ++i) fill_channels_last(out + i * stride, key, row0 + i, sample);
      return;
    }
    if constexpr (kInRegisters) {
#if defined(CPU_CAPABILITY_AVX512)
      const int64_t n = n_rows * groups;
      float* normals = lanes.data();
      for (int64_t at = 0; at < n; at += 16) {
        avx512::normals16(_mm512_loadu_si512(group_of.data() + at), _mm512_loadu_si512(row_of.data() + at), row0,
                          sample, key, normals + at, normals + padded + at, normals + 2 * padded + at,
                          normals + 3 * padded + at);
      }
#endif
    } else {
      normals_portable(key, row0, n_rows, sample, 0, groups);
    }
    copy_out(out, stride, n_rows);
  }

  // eps of columns 4 g0 .. 4 (g0 + n_groups) - 1 of one row of `sample` (n_groups <= padded) to
  // out[0 .. 4 n_groups): a tile of a long row, the same values as fill gives those columns.
  void fill_columns(T* out, core::PhiloxKey key, int64_t row, int64_t sample, int64_t g0, int64_t n_groups) {
    T* normals = lanes.data();
    if constexpr (kInRegisters) {
#if defined(CPU_CAPABILITY_AVX512)
      for (int64_t at = 0; at < n_groups; at += 16) {
        avx512::normals16(avx512::iota_from(g0 + at), _mm512_setzero_si512(), row, sample, key, normals + at,
                          normals + padded + at, normals + 2 * padded + at, normals + 3 * padded + at);
      }
#endif
    } else {
      normals_portable(key, row, 1, sample, g0, n_groups);
    }
    for (int64_t g = 0; g < n_groups; ++g) {
      for (int64_t lane = 0; lane < 4; ++lane) out[4 * g + lane] = normals[lane * padded + g];
    }
  }

 private:
  // Whether channels-last rows are drawn straight in storage order (fill_channels_last): float32
  // on AVX-512, C a multiple of 16 and S = D / C of 4. Otherwise copy_out scatters them.
  bool storage_order_in_registers() const {
    return kInRegisters && channels > 1 && channels % 16 == 0 && (dim / channels) % 4 == 0;
  }

  // One channels-last row in storage order, no scatter: calls c S/4 + k (k < S/4) for 16 channels
  // c0 .. c0 + 15 at once are lanes 0..3 of positions 4k .. 4k + 3 of those channels, so lane j of
  // the 16 calls is the 16 consecutive columns (4k + j) C + c0 .. + 15.
  void fill_channels_last(T* out, core::PhiloxKey key, int64_t row, int64_t sample) {
#if defined(CPU_CAPABILITY_AVX512)
    if constexpr (kInRegisters) {
      const int64_t quarter = dim / channels / 4;
      for (int64_t c0 = 0; c0 < channels; c0 += 16) {
        const __m512i first = _mm512_mullo_epi32(avx512::iota_from(c0), _mm512_set1_epi32(static_cast<int>(quarter)));
        for (int64_t k = 0; k < quarter; ++k) {
          T* at = out + 4 * k * channels + c0;
          avx512::normals16(_mm512_add_epi32(first, _mm512_set1_epi32(static_cast<int>(k))), _mm512_setzero_si512(),
                            row, sample, key, at, at + channels, at + 2 * channels, at + 3 * channels);
        }
      }
    }
#endif
  }

  // The four lanes of calls (g0 + g, row0 + i, sample), g < n_groups, i < n_rows, call i n_groups + g,
  // into `lanes`: words, Philox and Box-Muller each on whole arrays (the inner loops vectorize;
  // Sleef for log, cos, sin).
  void normals_portable(core::PhiloxKey key, int64_t row0, int64_t n_rows, int64_t sample, int64_t g0,
                        int64_t n_groups) {
    const int64_t n = n_rows * n_groups;
    uint32_t* w0 = words.data();
    uint32_t* w1 = w0 + padded;
    uint32_t* w2 = w1 + padded;
    uint32_t* w3 = w2 + padded;
    for (int64_t i = 0; i < n_rows; ++i) {
      for (int64_t g = 0; g < n_groups; ++g) {
        uint32_t c[4];
        core::noise_counter(c, g0 + g, row0 + i, sample);
        const int64_t at = i * n_groups + g;
        w0[at] = c[0];
        w1[at] = c[1];
        w2[at] = c[2];
        w3[at] = c[3];
      }
    }
    // Philox on whole arrays of counters, one round at a time: the inner loops vectorize.
    uint32_t k0 = key.k0, k1 = key.k1;
    for (int round = 0; round < 10; ++round) {
      for (int64_t at = 0; at < n; ++at) core::philox_round(w0[at], w1[at], w2[at], w3[at], k0, k1);
      k0 += core::kPhiloxW0;
      k1 += core::kPhiloxW1;
    }
    using M = core::Ops<Vec<T>>;
    constexpr int64_t W = Vec<T>::size();
    alignas(64) T u_a[W], th_a[W], u_b[W], th_b[W];
    T* normals = lanes.data();
    for (int64_t g0 = 0; g0 < n; g0 += W) {
      for (int64_t i = 0; i < W; ++i) {
        u_a[i] = core::box_muller_u<T>(w0[g0 + i]);
        th_a[i] = core::box_muller_theta<T>(w1[g0 + i]);
        u_b[i] = core::box_muller_u<T>(w2[g0 + i]);
        th_b[i] = core::box_muller_theta<T>(w3[g0 + i]);
      }
      const Vec<T> rad_a = (M::c(-2.0) * Vec<T>::loadu(u_a).log()).sqrt();
      const Vec<T> rad_b = (M::c(-2.0) * Vec<T>::loadu(u_b).log()).sqrt();
      const Vec<T> ta = Vec<T>::loadu(th_a), tb = Vec<T>::loadu(th_b);
      (rad_a * ta.cos()).store(normals + g0);
      (rad_a * ta.sin()).store(normals + padded + g0);
      (rad_b * tb.cos()).store(normals + 2 * padded + g0);
      (rad_b * tb.sin()).store(normals + 3 * padded + g0);
    }
  }

  // Lane d mod 4 of call (row i, group d div 4) to out[i stride + d] (with channels, to the
  // column that holds logical element d).
  void copy_out(T* out, int64_t stride, int64_t n_rows) const {
    const int64_t n = n_rows * groups;
    const T* normals = lanes.data();
    if (channels > 1) {
      const int64_t spatial = dim / channels;
      for (int64_t i = 0; i < n_rows; ++i) {
        T* row = out + i * stride;
        for (int64_t c = 0, d = 0; c < channels; ++c) {
          for (int64_t s = 0; s < spatial; ++s, ++d) {
            row[s * channels + c] = normals[(d & 3) * padded + i * groups + (d >> 2)];
          }
        }
      }
      return;
    }
    if (dim % 4 == 0 && stride == dim) {
      // Whole rows back to back: call c's four lanes are out[4 c .. 4 c + 3], a 4-way interleave.
      const T* n0 = normals;
      const T* n1 = n0 + padded;
      const T* n2 = n1 + padded;
      const T* n3 = n2 + padded;
      for (int64_t c = 0; c < n; ++c) {
        out[4 * c] = n0[c];
        out[4 * c + 1] = n1[c];
        out[4 * c + 2] = n2[c];
        out[4 * c + 3] = n3[c];
      }
      return;
    }
    for (int64_t i = 0; i < n_rows; ++i) {
      T* row = out + i * stride;
      for (int64_t d = 0; d < dim; ++d) row[d] = normals[(d & 3) * padded + i * groups + (d >> 2)];
    }
  }
};

// Where a latent kernel's eps comes from: the explicit eps tensor (contiguous (K, R, D), compute
// type) or Philox from the seed, for rows stored with `channels` (NoiseBlock). row() gives the D
// values of (row r, sample k); a task owns one Scratch (its blocks of noise and their buffers).
template <typename T>
struct EpsSource {
  const T* eps = nullptr;
  core::PhiloxKey key{0, 0};
  int64_t rows, dim, channels;

  EpsSource(const at::Tensor& explicit_eps, const at::Tensor& seed, int64_t n_rows, int64_t n_dim,
            int64_t n_channels = 1)
      : rows(n_rows), dim(n_dim), channels(n_channels) {
    if (explicit_eps.defined()) {
      eps = explicit_eps.const_data_ptr<T>();
    } else {
      key = core::seed_key(*seed.const_data_ptr<int64_t>());
    }
  }

  // A task's noise: `slots` blocks of rows (stride `padded`, zero beyond D), sample k in slot
  // k % slots, each with the sample and first row it holds. A kernel gives one slot per sample,
  // and reads rows in increasing order within a task, so each block is filled once.
  struct Scratch {
    NoiseBlock<T> noise;
    int64_t padded, slots;
    std::vector<T> blocks;        // slots x noise.max_rows x padded
    std::vector<int64_t> first;   // per slot: the block's first row, or -1
    std::vector<int64_t> sample;  // per slot: the block's sample
    Scratch(const EpsSource& source, int64_t padded_dim, int64_t n_slots)
        : noise(source.dim, source.channels),
          padded(padded_dim),
          slots(n_slots),
          blocks(n_slots * noise.max_rows * padded_dim, T(0)),
          first(n_slots, -1),
          sample(n_slots, -1) {}
  };

  const T* row(Scratch& scratch, int64_t r, int64_t k) const {
    if (eps != nullptr) return eps + (k * rows + r) * dim;
    const int64_t max_rows = scratch.noise.max_rows, slot = k % scratch.slots;
    T* block = scratch.blocks.data() + slot * max_rows * scratch.padded;
    int64_t& first = scratch.first[slot];
    if (scratch.sample[slot] != k || first < 0 || r < first || r >= first + max_rows) {
      first = r;
      scratch.sample[slot] = k;
      scratch.noise.fill(block, scratch.padded, key, r, std::min(max_rows, rows - r), k);
    }
    return block + (r - first) * scratch.padded;
  }
};

}  // namespace fastelbo
