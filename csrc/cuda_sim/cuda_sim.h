// A small CPU simulator of the CUDA execution model fastelbo's kernels use, so that the CUDA sources
// of csrc/cuda/ (device code in kernels/*.cuh and csrc/core/, and the ATen bindings *.cu) compile
// unchanged as host C++ (g++ -include this file, with include/ ahead of torch's headers) and run on
// CPU tensors: the "cuda" backend under FASTELBO_CUDA_SIM=1 (fastelbo/cpp_backend/cuda_sim.py).
//
// What it models:
//   - a grid's blocks run one after another; the blockDim.x threads of a block are fibers
//     (ucontext) scheduled cooperatively and deterministically: each thread runs, in thread order
//     (thread 0 first, or the last thread first: the order alternates over blocks and launches),
//     until it reaches a barrier (__syncthreads, or a warp shuffle) or returns; a barrier releases
//     its threads when every live thread of the block (every lane of its mask, for a shuffle) has
//     reached it. So each thread runs as far ahead of the others as the barriers allow: a missing
//     __syncthreads() lets the threads that run first read shared memory the others have not
//     written yet (or overwrite what they have not read), deterministically, in both orders;
//   - __shared__ is one array per kernel instantiation (and host thread), shared by the block's
//     threads (blocks run one after another, so it is per block); zero before the first launch,
//     then holding what the previous block left: a read of shared memory no thread wrote is not
//     flagged;
//   - __shfl_xor_sync exchanges a value between the lanes of a 32-thread warp (threads
//     32w..32w+31) with the intrinsic's semantics for a full or partial mask: it completes when
//     every lane of its mask has reached it (the other lanes may be anywhere); a mask naming a lane
//     that has exited, or a partner outside the mask, is an error (undefined on the device);
//   - threadIdx, blockIdx, blockDim, gridDim (1-D blocks, 2-D grids), and the launch itself:
//     FE_LAUNCH(grid, block, shared_bytes, stream, kernel)(args...), the bindings' spelling of
//     kernel<<<grid, block, shared_bytes, stream>>>(args...) (csrc/cuda/aten_utils.cuh); dynamic
//     shared memory is not simulated (the kernels use none, and a launch asking for it fails);
//   - __half and __nv_bfloat16 as 16-bit storage with the round-to-nearest-even conversions of
//     cuda_fp16.h / cuda_bf16.h (include/ holds the two headers);
//   - every __syncthreads() is one barrier (the device's barrier 0 counts arrivals, not call
//     sites), and a thread that has returned counts as arrived at its block's later barriers (as on
//     Volta and later GPUs); when every live thread waits and no barrier can release them (e.g.
//     threads at __syncthreads() while lanes of their warp wait for them in a shuffle), the run
//     stops with "deadlock", as the device would hang;
//   - include/c10/cuda/ stands in for the c10 CUDA headers the bindings use: the device guard does
//     nothing, the current stream is a null handle, the launch check reports a failed launch.
// Each host thread has a simulator of its own (thread_local), so ops may run in several threads.
// What it does not model: memory ordering between threads outside barriers and between blocks
// (threads here see every write at once), blocks running concurrently, timing, occupancy, warp
// divergence beyond the barriers, fast-math intrinsics (expf and the rest are the host's libm,
// within an ulp or two of CUDA's), atomics and streams; device memory is host memory, so an access
// out of a tensor's bounds reads or writes whatever is there (or crashes the process): built with
// AddressSanitizer (FASTELBO_CUDA_SIM_ASAN=1) such an access is reported.
#pragma once

#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <new>
#include <string>
#include <utility>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static thread_local

// A stream handle, as cuda_runtime_api.h declares it (no stream is simulated).
struct CUstream_st;
typedef CUstream_st* cudaStream_t;

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  dim3() = default;
  dim3(unsigned x_, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

namespace fe_sim {

constexpr size_t kStackBytes = 256 * 1024;  // per simulated thread

// A simulated thread's stack: mapped on demand (pages a fiber never touches cost nothing), with an
// inaccessible guard page below it, so an overflow faults instead of writing into a neighbour's.
class Stack {
 public:
  Stack() = default;
  Stack(const Stack&) = delete;
  Stack& operator=(const Stack&) = delete;
  ~Stack() {
    if (base_ != nullptr) munmap(base_, kStackBytes + guard_);
  }
  void allocate() {  // throws std::bad_alloc
    guard_ = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    void* p = mmap(nullptr, kStackBytes + guard_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw std::bad_alloc();
    base_ = static_cast<char*>(p);
    if (mprotect(base_, guard_, PROT_NONE) != 0) throw std::bad_alloc();
  }
  char* bottom() const { return base_ + guard_; }

 private:
  size_t guard_ = 0;
  char* base_ = nullptr;
};

enum State { kRunnable, kAtBlockBarrier, kAtWarpBarrier, kDone };

struct Thread {
  ucontext_t context;
  Stack stack;
  dim3 index;
  State state = kRunnable;
  unsigned shuffle_mask = 0;  // the mask of the shuffle it waits at
};

struct Warp {
  uint64_t slots[32];
};

struct Sim {
  ucontext_t scheduler;
  std::vector<Thread> threads;
  std::vector<Warp> warps;
  int current = -1;                          // the thread running, -1 in the scheduler
  dim3 block_index, block_dim, grid_dim{0};  // grid_dim.x = 0: no launch running
  std::function<void()> body;
  uint64_t launches = 0;  // launches so far (the thread order of a block alternates with it)
  // The blocks to run, as [begin, end) ranges of linear block indices (blockIdx.y * gridDim.x +
  // blockIdx.x); empty: every block. A test hook (set_block_ranges) for the kernels' 64-bit index
  // arithmetic at blocks past 2^31 elements, without simulating the million blocks before them.
  std::vector<std::pair<int64_t, int64_t>> block_ranges;
  std::string error;  // the first failure since take_error(), as a device's sticky error
};

inline Sim& sim() {
  static thread_local Sim s;
  return s;
}

// Run only the blocks in these ranges (of this host thread's launches) until cleared (n = 0).
inline void set_block_ranges(const int64_t* begin_end, int64_t n) {
  Sim& s = sim();
  s.block_ranges.clear();
  for (int64_t i = 0; i < n; ++i) s.block_ranges.emplace_back(begin_end[2 * i], begin_end[2 * i + 1]);
}

inline bool block_selected(int64_t linear) {
  const Sim& s = sim();
  if (s.block_ranges.empty()) return true;
  for (const auto& r : s.block_ranges) {
    if (linear >= r.first && linear < r.second) return true;
  }
  return false;
}

inline Thread& self() { return sim().threads[sim().current]; }

// Record a failure where the device would fault or hang (the first one counts) for the launch
// check to raise (take_error); the message names the block, and `thread` if it is >= 0.
inline void record_error(const std::string& what, int thread) {
  Sim& s = sim();
  if (!s.error.empty()) return;
  s.error = "cuda_sim: " + what;
  if (s.grid_dim.x > 0) {  // inside a launch
    s.error += " (block " + std::to_string(s.block_index.x) + "," + std::to_string(s.block_index.y) +
               (thread >= 0 ? ", thread " + std::to_string(thread) : "") + ")";
  }
}

// A failure in the running simulated thread: recorded, and the block stops (the thread leaves for
// the scheduler for good; launch() runs no further thread nor block). Outside a kernel: recorded.
inline void fail(const std::string& what) {
  Sim& s = sim();
  record_error(what, s.current);
  if (s.current >= 0) {
    self().state = kDone;
    swapcontext(&self().context, &s.scheduler);  // never resumed
  }
}

// The recorded failure, cleared ("" if none).
inline std::string take_error() {
  std::string error;
  error.swap(sim().error);
  return error;
}

inline void wait_at(State barrier) {
  Thread& t = self();
  t.state = barrier;
  swapcontext(&t.context, &sim().scheduler);
}

inline void entry() {
  sim().body();
  self().state = kDone;  // then uc_link: back to the scheduler
}

// Release the threads waiting at a barrier that every thread it concerns has reached: a
// __syncthreads() when every live thread of the block waits at one; a warp shuffle when every lane
// its mask names waits at a shuffle with that mask (a lane waiting with another mask has not
// reached this one yet: if it never can, the block deadlocks). A mask naming a lane that has
// exited is an error (undefined on the device), recorded here in the scheduler.
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
    Thread* lanes = &s.threads[w * 32];
    for (int l = 0; l < 32; ++l) {
      if (lanes[l].state != kAtWarpBarrier) continue;
      const unsigned mask = lanes[l].shuffle_mask;
      bool all_here = true;
      for (int m = 0; m < 32; ++m) {
        if (!((mask >> m) & 1u)) continue;
        if (lanes[m].state == kDone) {
          record_error("__shfl_xor_sync: the mask names a lane that has exited", w * 32 + l);
          return false;
        }
        all_here = all_here && lanes[m].state == kAtWarpBarrier && lanes[m].shuffle_mask == mask;
      }
      if (!all_here) continue;
      for (int m = 0; m < 32; ++m) {
        if ((mask >> m) & 1u) lanes[m].state = kRunnable;
      }
      released = true;
    }
  }
  return released;
}

// Whether a block runs its threads last first. FASTELBO_CUDA_SIM_ORDER=forward or reverse fixes
// the order (to replay a failure); by default it alternates over the blocks of a launch and over
// the launches of the host thread, so a test sees both orders across its launches (which order a
// one-block launch gets depends on how many launches the thread made before it).
inline bool reversed_order(uint64_t launch, unsigned bx, unsigned by) {
  static const int fixed = [] {
    const char* order = std::getenv("FASTELBO_CUDA_SIM_ORDER");
    if (order == nullptr) return -1;
    return std::strcmp(order, "reverse") == 0 ? 1 : (std::strcmp(order, "forward") == 0 ? 0 : -1);
  }();
  return fixed >= 0 ? fixed == 1 : ((launch + bx + by) & 1u) != 0;
}

// Run one block: every thread in order until it waits or returns, then release barriers, again.
// The order is thread 0 first, or (`reverse`) the last thread first: a missing barrier lets the
// threads that run first see the others' shared memory before they write it, so the two orders
// between them catch a reader on either side of its writer.
inline void run_block(bool reverse) {
  Sim& s = sim();
  const int n = static_cast<int>(s.threads.size());
  for (int i = 0; i < n; ++i) {
    Thread& t = s.threads[i];
    t.index = dim3(static_cast<unsigned>(i));
    t.state = kRunnable;
    getcontext(&t.context);
    t.context.uc_stack.ss_sp = t.stack.bottom();
    t.context.uc_stack.ss_size = kStackBytes;
    t.context.uc_link = &s.scheduler;
    makecontext(&t.context, entry, 0);
  }
  for (;;) {
    bool ran = false;
    for (int j = 0; j < n; ++j) {
      const int i = reverse ? n - 1 - j : j;
      if (s.threads[i].state != kRunnable) continue;
      s.current = i;
      swapcontext(&s.scheduler, &s.threads[i].context);
      s.current = -1;
      if (!s.error.empty()) return;  // a thread failed: the block stops
      ran = true;
    }
    const bool released = release_barriers();
    if (!s.error.empty()) return;
    bool done = true;
    for (const Thread& t : s.threads) done = done && t.state == kDone;
    if (done) return;
    if (!ran && !released) {
      return record_error("deadlock: the block's waiting threads are at barriers that cannot release", -1);
    }
  }
}

template <typename T>
T shuffle_xor(unsigned mask, T value, int lane_mask) {
  static_assert(sizeof(T) <= 8, "cuda_sim: shuffles of at most 8 bytes");
  Sim& s = sim();
  if (s.current < 0) {
    fail("__shfl_xor_sync called outside a kernel");
    return value;
  }
  const int lane = s.current % 32, partner = lane ^ lane_mask;
  if (!((mask >> lane) & 1u) || partner > 31 || !((mask >> partner) & 1u)) {
    fail("__shfl_xor_sync: the lane or its partner is not in the mask");
  }
  self().shuffle_mask = mask;  // a mask naming an exited lane: reported by release_barriers
  Warp& warp = s.warps[s.current / 32];
  uint64_t bits = 0;
  std::memcpy(&bits, &value, sizeof(T));
  warp.slots[lane] = bits;
  wait_at(kAtWarpBarrier);  // every lane of the mask has written
  const uint64_t theirs = sim().warps[sim().current / 32].slots[partner];
  wait_at(kAtWarpBarrier);  // every lane of the mask has read
  T other;
  std::memcpy(&other, &theirs, sizeof(T));
  return other;
}

// kernel<<<grid, block>>>(args...): the grid's blocks in order, each block's threads as fibers.
template <typename Kernel, typename... Args>
void launch(dim3 grid, dim3 block, Kernel kernel, const Args&... args) {
  Sim& s = sim();
  if (!s.error.empty()) return;  // a failed launch before this one: nothing runs (a sticky error)
  if (block.y != 1 || block.z != 1 || grid.z != 1) return fail("launch: 1-D blocks and 2-D grids only");
  if (block.x == 0 || block.x % 32 != 0 || block.x > 1024) {
    return fail("launch: blockDim.x must be a multiple of 32 <= 1024");
  }
  if (grid.x == 0 || grid.y == 0 || grid.y > 65535) return fail("launch: invalid grid");
  s.block_dim = block;
  s.grid_dim = grid;
  if (s.threads.size() != block.x) {
    std::vector<Thread> threads(block.x);  // every stack mapped before any replaces the old ones
    for (Thread& t : threads) t.stack.allocate();
    s.threads = std::move(threads);
    s.warps = std::vector<Warp>(block.x / 32);
  }
  s.body = [&] { kernel(args...); };
  ++s.launches;
  for (unsigned by = 0; by < grid.y; ++by) {
    for (unsigned bx = 0; bx < grid.x; ++bx) {
      if (!block_selected(static_cast<int64_t>(by) * grid.x + bx)) continue;
      s.block_index = dim3(bx, by);
      run_block(reversed_order(s.launches, bx, by));
      if (!s.error.empty()) break;
    }
    if (!s.error.empty()) break;
  }
  s.body = nullptr;
  s.grid_dim = dim3(0);
}

// FE_LAUNCH(grid, block, shared_bytes, stream, kernel)(args...): a callable that launches.
template <typename Kernel>
auto launcher(dim3 grid, dim3 block, size_t shared_bytes, Kernel kernel) {
  return [=](const auto&... args) {
    if (shared_bytes != 0) return fail("launch: dynamic shared memory is not simulated");
    launch(grid, block, kernel, args...);
  };
}

}  // namespace fe_sim

#define FE_LAUNCH(grid, block, shared_bytes, stream, ...) ::fe_sim::launcher(grid, block, shared_bytes, __VA_ARGS__)

#define threadIdx (::fe_sim::self().index)
#define blockIdx (::fe_sim::sim().block_index)
#define blockDim (::fe_sim::sim().block_dim)
#define gridDim (::fe_sim::sim().grid_dim)

inline void __syncthreads() {
  if (fe_sim::sim().current < 0) return fe_sim::fail("__syncthreads called outside a kernel");
  fe_sim::wait_at(fe_sim::kAtBlockBarrier);
}

template <typename T>
inline T __shfl_xor_sync(unsigned mask, T value, int lane_mask) {
  return fe_sim::shuffle_xor(mask, value, lane_mask);
}
