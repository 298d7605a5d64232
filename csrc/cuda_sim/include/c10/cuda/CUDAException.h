// cuda_sim: C10_CUDA_KERNEL_LAUNCH_CHECK for the simulated CUDA bindings: raises (a c10::Error,
// RuntimeError in Python) what the simulator recorded in the launch before it, e.g. a deadlock at a
// barrier, a shuffle with a lane outside its mask, an invalid launch configuration.
#pragma once

#include <c10/util/Exception.h>

#define C10_CUDA_KERNEL_LAUNCH_CHECK()                       \
  do {                                                       \
    const std::string fe_sim_error = ::fe_sim::take_error(); \
    TORCH_CHECK(fe_sim_error.empty(), fe_sim_error);         \
  } while (0)
