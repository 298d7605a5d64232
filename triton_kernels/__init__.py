"""Triton kernels of fastelbo, installed as `fastelbo.triton_kernels` (never as a top-level
`triton_kernels`: that name is Triton's own). Kernel files hold kernels only; launchers live in
the fastelbo package."""
