// The fastelbo operators as typed dispatcher handles, each looked up once (on its first call, when
// the library has registered every schema of schema.cpp). A call through a handle enters the
// dispatcher at the top, as torch.ops.fastelbo.<op> does: autograd (autograd.cpp), then the CPU or
// CUDA kernel by device. Used by the autograd (autograd.cpp) and the Python bindings (python.cpp).
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/SymIntArrayRef.h>

#include <array>
#include <optional>
#include <tuple>

namespace fastelbo {
namespace ops {

using at::Tensor;
using OptTensor = std::optional<Tensor>;
using Tensor2 = std::tuple<Tensor, Tensor>;
using Tensor3 = std::tuple<Tensor, Tensor, Tensor>;
using Tensor4 = std::tuple<Tensor, Tensor, Tensor, Tensor>;
using Tensor5 = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor>;

template <typename Sig>
inline c10::TypedOperatorHandle<Sig> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Sig>();
}

#define FASTELBO_OP(fn, name, ...)                           \
  inline const c10::TypedOperatorHandle<__VA_ARGS__>& fn() { \
    static const auto handle = find_op<__VA_ARGS__>(name);   \
    return handle;                                           \
  }

FASTELBO_OP(gaussian_latent_op, "fastelbo::gaussian_latent",
            Tensor5(const Tensor&, const Tensor&, const OptTensor&, const OptTensor&, const OptTensor&,
                    const OptTensor&, int64_t, int64_t, bool, int64_t))
FASTELBO_OP(gaussian_latent_backward_op, "fastelbo::gaussian_latent_backward",
            Tensor4(const OptTensor&, const OptTensor&, const OptTensor&, const OptTensor&, const Tensor&,
                    const Tensor&, const OptTensor&, const OptTensor&, const OptTensor&, const OptTensor&, int64_t,
                    int64_t, bool, int64_t))
FASTELBO_OP(gaussian_latent_backward_differentiable_op, "fastelbo::gaussian_latent_backward_differentiable",
            Tensor4(const OptTensor&, const OptTensor&, const OptTensor&, const OptTensor&, const Tensor&,
                    const Tensor&, const OptTensor&, const OptTensor&, const OptTensor&, const OptTensor&, int64_t,
                    int64_t, bool, int64_t, std::array<bool, 4>))
FASTELBO_OP(gaussian_kl_op, "fastelbo::gaussian_kl",
            Tensor(const Tensor&, const Tensor&, const OptTensor&, const OptTensor&, int64_t, bool))
FASTELBO_OP(gaussian_kl_backward_op, "fastelbo::gaussian_kl_backward",
            Tensor4(const Tensor&, const Tensor&, const Tensor&, const OptTensor&, const OptTensor&, int64_t, bool))
FASTELBO_OP(gaussian_kl_backward_differentiable_op, "fastelbo::gaussian_kl_backward_differentiable",
            Tensor4(const Tensor&, const Tensor&, const Tensor&, const OptTensor&, const OptTensor&, int64_t, bool,
                    std::array<bool, 4>))
FASTELBO_OP(bernoulli_op, "fastelbo::bernoulli_log_prob", Tensor2(const Tensor&, const Tensor&, int64_t, bool, double))
FASTELBO_OP(continuous_bernoulli_op, "fastelbo::continuous_bernoulli_log_prob",
            Tensor2(const Tensor&, const Tensor&, int64_t, bool, double))
FASTELBO_OP(bernoulli_backward_differentiable_op, "fastelbo::bernoulli_log_prob_backward_differentiable",
            Tensor2(const OptTensor&, const OptTensor&, const Tensor&, const OptTensor&, const Tensor&, int64_t,
                    at::ScalarType, double, std::array<bool, 2>))
FASTELBO_OP(continuous_bernoulli_backward_differentiable_op,
            "fastelbo::continuous_bernoulli_log_prob_backward_differentiable",
            Tensor2(const OptTensor&, const OptTensor&, const Tensor&, const OptTensor&, const Tensor&, int64_t,
                    at::ScalarType, double, std::array<bool, 2>))
FASTELBO_OP(gaussian_op, "fastelbo::gaussian_log_prob",
            Tensor2(const Tensor&, const Tensor&, const OptTensor&, double, int64_t, bool, double))
FASTELBO_OP(gaussian_backward_op, "fastelbo::gaussian_log_prob_backward",
            Tensor2(const Tensor&, const Tensor&, const OptTensor&, double, int64_t, bool, double, bool))
FASTELBO_OP(gaussian_backward_differentiable_op, "fastelbo::gaussian_log_prob_backward_differentiable",
            Tensor3(const OptTensor&, const OptTensor&, const Tensor&, const OptTensor&, double, int64_t,
                    at::ScalarType, c10::SymIntArrayRef, at::ScalarType, double, std::array<bool, 3>))
FASTELBO_OP(categorical_op, "fastelbo::categorical_log_prob", Tensor2(const Tensor&, const Tensor&, int64_t, bool))
FASTELBO_OP(categorical_backward_differentiable_op, "fastelbo::categorical_log_prob_backward_differentiable",
            Tensor(const OptTensor&, const OptTensor&, const Tensor&, const Tensor&, int64_t, at::ScalarType))
FASTELBO_OP(dmol_op, "fastelbo::discretized_logistic_mixture_log_prob",
            Tensor2(const Tensor&, const Tensor&, int64_t, int64_t, int64_t, bool))
FASTELBO_OP(dmol_backward_differentiable_op, "fastelbo::discretized_logistic_mixture_log_prob_backward_differentiable",
            Tensor(const Tensor&, const Tensor&, const Tensor&, int64_t, int64_t, int64_t))
FASTELBO_OP(elbo_op, "fastelbo::elbo",
            Tensor2(const Tensor&, const Tensor&, const Tensor&, const Tensor&, int64_t, double))
FASTELBO_OP(elbo_backward_differentiable_op, "fastelbo::elbo_backward_differentiable",
            Tensor3(const Tensor&, const Tensor&, const Tensor&, const Tensor&, std::array<bool, 3>))

#undef FASTELBO_OP

}  // namespace ops
}  // namespace fastelbo
