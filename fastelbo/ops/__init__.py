"""The ops, one module each: `fastelbo/ops/<name>.py` holds everything op `<name>` is.

    the public function fastelbo.<name>   argument checks, then the backend's kernel
    SCHEMAS                               its torch ops' schemas: fastelbo::<name> (and its backward
                                          kernel); the C++ kernels are the default overload
                                          (csrc/binding/schema.cpp), Triton's the `.triton` overload,
                                          the CUDA simulator's the `.cuda_sim` overload
    reference(...)                        the pure-PyTorch implementation: backend "reference", and
                                          the oracle every kernel is tested against
    FAKES                                 output shapes for torch.compile, per torch op
    AUTOGRAD                              (backward, setup_context) of the `.triton` and `.cuda_sim`
                                          overloads (the C++ op's autograd is C++:
                                          csrc/binding/autograd.cpp)
    SECOND_ORDER                          the differentiable backward (create_graph=True), the C++
                                          op's `*_backward_differentiable` composite

The backends supply kernels only: fastelbo/cpp_backend/ loads the C++ library and registers these
fakes and composites on its ops; fastelbo/triton_backend/ defines the `.triton` overloads with
these schemas, its launchers as their kernels, and these fakes and autograd rules (_overloads.py);
fastelbo/cpp_backend/cuda_sim.py does the same for the `.cuda_sim` overloads, whose kernels are the
CUDA bindings built for the CPU simulator (csrc/cuda_sim/).
"""
from . import (bernoulli_log_prob, categorical_log_prob, continuous_bernoulli_log_prob,
               discretized_logistic_mixture_log_prob, elbo, gaussian_kl, gaussian_latent, gaussian_log_prob)
from . import linear_bernoulli_log_prob, linear_gaussian_log_prob

MODULES = (gaussian_latent, gaussian_kl, bernoulli_log_prob, continuous_bernoulli_log_prob, gaussian_log_prob,
           categorical_log_prob, discretized_logistic_mixture_log_prob, elbo)

# The fused "linear + likelihood" ops (a decoder's last nn.Linear and its likelihood): composite
# ops, one kernel in Python for every backend (torch's GEMMs and the likelihood's kernel of the
# backend the call resolves to, named by the op's `kernel` argument), defined by their modules
# with SCHEMAS, kernels, fakes and autograd (fastelbo/ops/_linear_head.py).
LINEAR_HEADS = (linear_bernoulli_log_prob, linear_gaussian_log_prob)
