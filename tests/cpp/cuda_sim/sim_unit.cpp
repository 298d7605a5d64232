// Unit checks of the CUDA simulator itself (csrc/cuda_sim/cuda_sim.h), on tiny kernels: the thread
// order alternating over blocks and launches, a missing barrier caught on either side of its
// writer, shuffles completing per mask (partial masks), and the errors a device would hang or be
// undefined on. Built and run by tests/test_cuda_sim.py (g++ -include cuda_sim.h); prints one line
// per check and exits 1 if any fails.
#include <cstdio>
#include <string>
#include <vector>

namespace {

int failures = 0;

void check(bool ok, const char* what) {
  std::printf("%s %s\n", ok ? "ok" : "FAIL", what);
  failures += !ok;
}

// The order in which a block's threads first ran: order[block * n + thread] = its rank.
__global__ void order_kernel(int* order, int* counter) {
  order[blockIdx.x * blockDim.x + threadIdx.x] = counter[blockIdx.x]++;
}

bool ran_forward(const std::vector<int>& order, int block, int n) {
  for (int t = 0; t < n; ++t)
    if (order[block * n + t] != t) return false;
  return true;
}

bool ran_reversed(const std::vector<int>& order, int block, int n) {
  for (int t = 0; t < n; ++t)
    if (order[block * n + t] != n - 1 - t) return false;
  return true;
}

// Each thread writes its shared slot, then reads its neighbour's (offset +1 or -1; the first or
// last thread, without that neighbour, its own), with or without the barrier between: out = the
// neighbour's index + 1 when correct.
__global__ void neighbour_kernel(int* out, int offset, bool barrier) {
  __shared__ int slot[64];
  const int n = static_cast<int>(blockDim.x);
  slot[threadIdx.x] = static_cast<int>(threadIdx.x) + 1 + 1000 * static_cast<int>(blockIdx.x);
  if (barrier) __syncthreads();
  const int t = static_cast<int>(threadIdx.x);
  const int other = t + offset >= 0 && t + offset < n ? t + offset : t;
  out[blockIdx.x * blockDim.x + threadIdx.x] = slot[other] - 1000 * static_cast<int>(blockIdx.x);
  __syncthreads();  // the next block's writes wait for every read of this one
}

// Neighbour reads, over the 2 blocks of one launch: whether every value was right.
bool neighbours_right(int offset, bool barrier) {
  std::vector<int> out(128, -1);
  FE_LAUNCH(2, 64, 0, nullptr, neighbour_kernel)(out.data(), offset, barrier);
  bool right = fe_sim::take_error().empty();
  for (int b = 0; b < 2; ++b)
    for (int t = 0; t < 64; ++t)
      right = right && out[b * 64 + t] == (t + offset >= 0 && t + offset < 64 ? t + offset : t) + 1;
  return right;
}

// Lanes 0-15 exchange with their xor-1 partner under mask 0x0000FFFF, lanes 16-31 with their xor-2
// partner under 0xFFFF0000 (each half completes without the other), then the block meets.
__global__ void partial_mask_kernel(int* out) {
  const int lane = static_cast<int>(threadIdx.x) & 31;
  int v = static_cast<int>(threadIdx.x);
  if (lane < 16) {
    v = __shfl_xor_sync(0x0000FFFFu, v, 1);
  } else {
    v = __shfl_xor_sync(0xFFFF0000u, v, 2);
  }
  __syncthreads();
  out[threadIdx.x] = v;
}

// Half of each warp calls a full-mask shuffle; the other half waits at the block barrier
// (`exit_instead`: returns), which the shuffle's lanes never reach.
__global__ void divergent_shuffle_kernel(bool exit_instead) {
  const int lane = static_cast<int>(threadIdx.x) & 31;
  if (lane >= 16) {
    if (exit_instead) return;
    __syncthreads();
    return;
  }
  (void)__shfl_xor_sync(0xFFFFFFFFu, lane, 1);
  __syncthreads();
}

}  // namespace

int main() {
  // Thread order: the two blocks of a launch run in opposite orders, and so does a one-block
  // launch after another one-block launch.
  std::vector<int> order(128), counter(2, 0);
  FE_LAUNCH(2, 64, 0, nullptr, order_kernel)(order.data(), counter.data());
  const bool first_forward = ran_forward(order, 0, 64);
  check((first_forward && ran_reversed(order, 1, 64)) || (ran_reversed(order, 0, 64) && ran_forward(order, 1, 64)),
        "the blocks of one launch run their threads in opposite orders");
  std::vector<bool> forward;
  for (int launch = 0; launch < 2; ++launch) {
    counter.assign(2, 0);
    FE_LAUNCH(1, 64, 0, nullptr, order_kernel)(order.data(), counter.data());
    forward.push_back(ran_forward(order, 0, 64));
    check(forward.back() || ran_reversed(order, 0, 64), "a one-block launch runs its threads in one order");
  }
  check(forward[0] != forward[1], "consecutive one-block launches run their threads in opposite orders");

  // A missing barrier: the reader of a higher neighbour's slot is caught by the forward order, the
  // reader of a lower one's by the reverse order; with the barrier both are right.
  check(neighbours_right(+1, true) && neighbours_right(-1, true), "with the barrier, every neighbour read is right");
  check(!neighbours_right(+1, false), "without the barrier, reading the next thread's slot goes wrong");
  check(!neighbours_right(-1, false), "without the barrier, reading the previous thread's slot goes wrong");

  // Partial masks: each half of the warp completes its own shuffle.
  std::vector<int> out(64, -1);
  FE_LAUNCH(1, 64, 0, nullptr, partial_mask_kernel)(out.data());
  bool right = fe_sim::take_error().empty();
  for (int t = 0; t < 64; ++t) right = right && out[t] == ((t & 31) < 16 ? t ^ 1 : t ^ 2);
  check(right, "shuffles under two partial masks of one warp exchange within their halves");

  // Errors: a shuffle waiting for lanes at the block barrier (a hang), or for lanes that exit
  // (before or after the shuffle's lanes wait: both orders).
  FE_LAUNCH(1, 32, 0, nullptr, divergent_shuffle_kernel)(false);
  check(fe_sim::take_error().find("deadlock") != std::string::npos, "a shuffle half its mask never reaches deadlocks");
  for (int launch = 0; launch < 2; ++launch) {
    FE_LAUNCH(1, 32, 0, nullptr, divergent_shuffle_kernel)(true);
    check(fe_sim::take_error().find("exited") != std::string::npos, "a shuffle naming lanes that exit is an error");
  }
  // A launch after a failed one runs again (the error was taken).
  counter.assign(2, 0);
  FE_LAUNCH(1, 64, 0, nullptr, order_kernel)(order.data(), counter.data());
  check(fe_sim::take_error().empty() && counter[0] == 64, "a launch after a reported failure runs");
  return failures == 0 ? 0 : 1;
}
