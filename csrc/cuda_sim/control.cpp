// The simulator's test hook, callable with ctypes (fastelbo/cpp_backend/cuda_sim.py: only_blocks):
// run only the blocks of the given [begin, end) ranges of linear block indices, n ranges as 2 n
// int64 values (n = 0: every block again), in the calling host thread's launches.
#include "cuda_sim.h"

extern "C" void fastelbo_cuda_sim_set_block_ranges(const int64_t* begin_end, int64_t n) {
  fe_sim::set_block_ranges(begin_end, n);
}
