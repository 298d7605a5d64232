"""The C++ backends: "cpu" (vectorized, multi-threaded kernels for CPU tensors) and "cuda" (CUDA
kernels), both built from csrc/ just in time on first use, with ninja."""
