// csrc/cuda/register.cu compiled as host C++ for the CPU simulator (cuda_sim.h, first).
#include "cuda_sim.h"
#include "../cuda/register.cu"
