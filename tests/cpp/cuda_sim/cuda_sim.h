// A small CPU simulator of the CUDA execution model fastelbo's kernels use, so that the device code
// of csrc/cuda/kernels/*.cuh (and csrc/core/) runs unchanged as host C++ (g++ -include this file).
//
// What it models:
//   - a grid's blocks run one after another; the blockDim.x threads of a block are fibers
//     (ucontext) scheduled cooperatively and deterministically: each thread runs, in thread order,
//     until it reaches a barrier (__syncthreads, or a warp shuffle) or returns; a barrier releases
//     its threads when every live thread of the block (of the warp, for a shuffle) has reached it.
//     So each thread runs as far ahead of the others as the barriers allow: a missing
//     __syncthreads() lets thread 0 read shared memory the other warps have not written yet,
//     every time, rather than now and then;
//   - __shared__ is one array per kernel instantiation, shared by the block's threads (blocks run
//     one after another, so it is per block; as on the device it is not cleared between blocks);
//   - __shfl_xor_sync exchanges a value between the lanes of a 32-thread warp (threads
//     32w..32w+31) with the intrinsic's semantics for a full or partial mask; a shuffle whose mask
//     names a lane that has exited, or whose partner is outside the mask, is an error (undefined
//     on the device);
//   - threadIdx, blockIdx, blockDim, gridDim (1-D blocks, 2-D grids);
//   - __half and __nv_bfloat16 as 16-bit storage with the round-to-nearest-even conversions of
//     cuda_fp16.h / cuda_bf16.h (include/ holds the two headers);
//   - a thread that has returned counts as arrived at its block's later barriers (as on Volta and
//     later GPUs); when every live thread waits and no barrier can release them (threads of one
//     block at different barriers), the run stops with "deadlock", as the device would hang.
// What it does not model: memory ordering between threads outside barriers and between blocks
// (threads here see every write at once), blocks running concurrently, timing, occupancy, warp
// divergence beyond the barriers, fast-math intrinsics (expf and the rest are the host's libm),
// atomics and streams.
#pragma once

#include <ucontext.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  dim3() = default;
  dim3(unsigned x_, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

namespace fe_sim {

enum State { kRunnable, kAtBlockBarrier, kAtWarpBarrier, kDone };

struct Thread {
  ucontext_t context;
  std::vector<char> stack;
  dim3 index;
  State state = kRunnable;
};

struct Warp {
  uint64_t slots[32];
};

struct Sim {
  ucontext_t scheduler;
  std::vector<Thread> threads;
  std::vector<Warp> warps;
  int current = 0;
  dim3 block_index, block_dim, grid_dim;
  std::function<void()> body;
};

inline Sim& sim() {
  static Sim s;
  return s;
}

[[noreturn]] inline void fail(const char* what) {
  Sim& s = sim();
  std::fprintf(stderr, "cuda_sim: %s (block %u,%u, thread %d)\n", what, s.block_index.x, s.block_index.y, s.current);
  std::fflush(stderr);
  std::abort();
}

inline Thread& self() { return sim().threads[sim().current]; }

inline void wait_at(State barrier) {
  Thread& t = self();
  t.state = barrier;
  swapcontext(&t.context, &sim().scheduler);
}

inline void entry() {
  sim().body();
  self().state = kDone;  // then uc_link: back to the scheduler
}

// Release the threads waiting at a barrier that every live thread it concerns has reached.
inline bool release_barriers() {
  Sim& s = sim();
  const int n = static_cast<int>(s.threads.size());
  int live = 0, at_block = 0;
  for (const Thread& t : s.threads) {
    live += t.state != kDone;
    at_block += t.state == kAtBlockBarrier;
  }
  bool released = false;
  if (at_block > 0 && at_block == live) {
    for (Thread& t : s.threads) {
      if (t.state == kAtBlockBarrier) t.state = kRunnable;
    }
    released = true;
  }
  for (int w = 0; w < n / 32; ++w) {
    int lanes_live = 0, at_warp = 0;
    for (int l = 0; l < 32; ++l) {
      const Thread& t = s.threads[w * 32 + l];
      lanes_live += t.state != kDone;
      at_warp += t.state == kAtWarpBarrier;
    }
    if (at_warp > 0 && at_warp == lanes_live) {
      for (int l = 0; l < 32; ++l) {
        Thread& t = s.threads[w * 32 + l];
        if (t.state == kAtWarpBarrier) t.state = kRunnable;
      }
      released = true;
    }
  }
  return released;
}

// Run one block: every thread in order until it waits or returns, then release barriers, again.
inline void run_block() {
  Sim& s = sim();
  for (size_t i = 0; i < s.threads.size(); ++i) {
    Thread& t = s.threads[i];
    t.index = dim3(static_cast<unsigned>(i));
    t.state = kRunnable;
    getcontext(&t.context);
    t.context.uc_stack.ss_sp = t.stack.data();
    t.context.uc_stack.ss_size = t.stack.size();
    t.context.uc_link = &s.scheduler;
    makecontext(&t.context, entry, 0);
  }
  for (;;) {
    bool ran = false;
    for (size_t i = 0; i < s.threads.size(); ++i) {
      if (s.threads[i].state != kRunnable) continue;
      s.current = static_cast<int>(i);
      swapcontext(&s.scheduler, &s.threads[i].context);
      ran = true;
    }
    const bool released = release_barriers();
    bool done = true;
    for (const Thread& t : s.threads) done = done && t.state == kDone;
    if (done) return;
    if (!ran && !released) fail("deadlock: the block's waiting threads are at barriers that cannot release");
  }
}

template <typename T>
T shuffle_xor(unsigned mask, T value, int lane_mask) {
  static_assert(sizeof(T) <= 8, "cuda_sim: shuffles of at most 8 bytes");
  Sim& s = sim();
  const int lane = s.current % 32, first = s.current - lane, partner = lane ^ lane_mask;
  if (!((mask >> lane) & 1u) || partner > 31 || !((mask >> partner) & 1u)) {
    fail("__shfl_xor_sync: the lane or its partner is not in the mask");
  }
  for (int l = 0; l < 32; ++l) {
    if (((mask >> l) & 1u) && s.threads[first + l].state == kDone) {
      fail("__shfl_xor_sync: the mask names a lane that has exited");
    }
  }
  Warp& warp = s.warps[s.current / 32];
  uint64_t bits = 0;
  std::memcpy(&bits, &value, sizeof(T));
  warp.slots[lane] = bits;
  wait_at(kAtWarpBarrier);  // every lane has written
  const uint64_t theirs = sim().warps[sim().current / 32].slots[partner];
  wait_at(kAtWarpBarrier);  // every lane has read
  T other;
  std::memcpy(&other, &theirs, sizeof(T));
  return other;
}

// kernel<<<grid, block>>>(args...): the grid's blocks in order, each block's threads as fibers.
template <typename Kernel, typename... Args>
void launch(dim3 grid, dim3 block, Kernel kernel, const Args&... args) {
  if (block.y != 1 || block.z != 1 || grid.z != 1) fail("launch: 1-D blocks and 2-D grids only");
  if (block.x == 0 || block.x % 32 != 0 || block.x > 1024) fail("launch: blockDim.x must be a multiple of 32 <= 1024");
  Sim& s = sim();
  s.block_dim = block;
  s.grid_dim = grid;
  if (s.threads.size() != block.x) {
    s.threads = std::vector<Thread>(block.x);
    for (Thread& t : s.threads) t.stack.resize(256 * 1024);
    s.warps = std::vector<Warp>(block.x / 32);
  }
  s.body = [&] { kernel(args...); };
  for (unsigned by = 0; by < grid.y; ++by) {
    for (unsigned bx = 0; bx < grid.x; ++bx) {
      s.block_index = dim3(bx, by);
      run_block();
    }
  }
  s.body = nullptr;
}

}  // namespace fe_sim

#define threadIdx (::fe_sim::self().index)
#define blockIdx (::fe_sim::sim().block_index)
#define blockDim (::fe_sim::sim().block_dim)
#define gridDim (::fe_sim::sim().grid_dim)

inline void __syncthreads() { fe_sim::wait_at(fe_sim::kAtBlockBarrier); }

template <typename T>
inline T __shfl_xor_sync(unsigned mask, T value, int lane_mask) {
  return fe_sim::shuffle_xor(mask, value, lane_mask);
}
