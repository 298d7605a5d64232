// A fused op's autograd graph node, written as PyTorch's generated nodes are
// (torch/csrc/autograd/generated/Functions.h): the op's Autograd kernel makes the node, gives it the
// edges of the op's differentiable inputs, runs the op below autograd, sets the node as the history of
// the differentiable outputs and saves what the backward needs in SavedVariables. The backward is a
// pure function of the saved tensors, the op's constants, the incoming gradients and which inputs
// need a gradient, so the same function serves the eager engine (apply) and compiled autograd
// (apply_with_saved, which hands it to the compiler as an opaque function, as CppNode does for a
// torch::autograd::Function).
//
// Why not torch::autograd::Function: its apply builds the input and output VariableInfos, a
// std::function for jvp, the sets of _wrap_outputs and a string-keyed map of saved data, and its
// CppNode checks them again in the backward. At a small latent that was 3 us of a 6.5 us op call
// (a native op's node costs about 0.5 us).
//
// An Op (autograd.cpp) provides:
//   kName                       the node's name ("GaussianLatentBackward")
//   kInputs                     the differentiable arguments, by position (an absent optional has no edge)
//   kSaved, kConstants          how many tensors and IValue constants the backward reads
//   backward(saved, constants, grads, needs) -> kInputs gradients (undefined where not needed)
#pragma once

#include <ATen/FuncTorchTLS.h>
#include <ATen/core/ivalue.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/csrc/autograd/saved_variable.h>
#include <torch/csrc/dynamo/compiled_autograd.h>

#include <array>
#include <functional>
#include <initializer_list>
#include <memory>
#include <mutex>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace fastelbo {

using torch::autograd::variable_list;

// The smart pointer that owns autograd nodes (an Edge's `function`).
using NodePtr = decltype(torch::autograd::Edge::function);

template <class Op>
using Constants = std::array<c10::IValue, Op::kConstants>;

template <class Op>
using Needs = std::array<bool, Op::kInputs>;

template <class Op>
struct FusedNode final : public torch::autograd::Node {
  std::array<torch::autograd::SavedVariable, Op::kSaved> saved_;
  std::array<bool, Op::kSaved> saved_is_output_{};
  Constants<Op> constants_;

  std::string name() const override {
    return Op::kName;
  }

  variable_list apply(variable_list&& grads) override {
    std::lock_guard<std::mutex> lock(mutex_);
    return Op::backward(unpack_saved(), constants_, grads, needs());
  }

  void release_variables() override {
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto& saved : saved_) {
      saved.reset_data();
    }
  }

  // Compiled autograd's cache key: the node's kind, its saved tensors (lifted to graph inputs) and its
  // constants (specialized on).
  void compiled_args(torch::dynamo::autograd::CompiledNodeArgs& args) const override {
    args.collect(std::string(Op::kName));
    for (size_t i = 0; i < Op::kSaved; ++i) {
      args.collect(saved_[i], saved_is_output_[i]);
    }
    for (const c10::IValue& constant : constants_) {
      args.collect(constant);
    }
  }

  // Compiled autograd's trace: the backward as an opaque call of `functional` on the saved tensors
  // (the compiler's proxies, swapped in by `swap`), the constants and `needs`, as CppNode's.
  variable_list apply_with_saved(const variable_list& grads,
                                 torch::dynamo::autograd::SwapSavedVariables& swap) override {
    for (auto& saved : saved_) {
      swap.before(saved);
    }
    for (c10::IValue& constant : constants_) {
      swap.before(constant);
    }
    // The node's own tensors and constants back in place however this returns.
    struct Restore {
      FusedNode& node;
      torch::dynamo::autograd::SwapSavedVariables& swap;
      ~Restore() {
        for (auto& saved : node.saved_) {
          swap.after(saved);
        }
        for (c10::IValue& constant : node.constants_) {
          swap.after(constant);
        }
      }
    } restore{*this, swap};
    torch::dynamo::autograd::PackedArgs packed;
    packed.pack(unpack_saved());
    for (const c10::IValue& constant : constants_) {
      packed.pack(constant);
    }
    const Needs<Op> needs_now = needs();
    packed.pack(std::vector<bool>(needs_now.begin(), needs_now.end()));
    const std::vector<c10::IValue> args = std::move(packed).vec();
    std::vector<at::TypePtr> schema;
    schema.reserve(args.size());
    for (const c10::IValue& arg : args) {
      schema.emplace_back(arg.isTensor() ? at::TensorType::get() : arg.type());
    }
    const auto& compiler = torch::dynamo::autograd::getPyCompilerInterface();
    const std::string fn_name = compiler->bind_function(swap.get_py_compiler(), Op::kName, &functional, schema,
                                                        /*is_custom_function=*/true, /*is_traceable=*/false);
    const auto output_metadata =
        torch::dynamo::autograd::IValuePacker<std::vector<std::optional<torch::autograd::InputMetadata>>>::pack(
            torch::dynamo::autograd::get_input_metadata(next_edges()));
    return compiler->call_function(swap.get_py_compiler(), "apply_functional", fn_name, grads, args,
                                   output_metadata);
  }

  // The backward on packed arguments (apply_with_saved's order).
  static variable_list functional(const variable_list& grads, const std::vector<c10::IValue>& args) {
    torch::dynamo::autograd::PackedArgs packed(args);
    const variable_list saved = packed.unpack<variable_list>();
    Constants<Op> constants;
    for (c10::IValue& constant : constants) {
      constant = packed.unpack<c10::IValue>();
    }
    const std::vector<bool> needs_now = packed.unpack<std::vector<bool>>();
    Needs<Op> needs{};
    for (size_t i = 0; i < Op::kInputs; ++i) {
      needs[i] = needs_now[i];
    }
    return Op::backward(saved, constants, grads, needs);
  }

 private:
  Needs<Op> needs() const {
    Needs<Op> result{};
    for (size_t i = 0; i < Op::kInputs; ++i) {
      result[i] = task_should_compute_output(i);
    }
    return result;
  }

  variable_list unpack_saved() {
    variable_list tensors;
    tensors.reserve(Op::kSaved);
    for (size_t i = 0; i < Op::kSaved; ++i) {
      tensors.emplace_back(saved_is_output_[i] ? saved_[i].unpack(getptr()) : saved_[i].unpack());
    }
    return tensors;
  }
};

// Nodes are owned by std::shared_ptr in torch before 2.13 (freed by torch::autograd::deleteNode,
// which such a torch declares: found here by argument-dependent lookup, in the branch only that
// torch compiles), by c10::intrusive_ptr since.
template <class Op>
NodePtr make_node_ptr() {
  if constexpr (std::is_same_v<NodePtr, std::shared_ptr<torch::autograd::Node>>) {
    return NodePtr(new FusedNode<Op>(), [](auto* node) { deleteNode(node); });
  } else {
    return c10::make_intrusive<FusedNode<Op>>();
  }
}

// The node of one recorded call of an Op: made before the op runs (`inputs`: the op's differentiable
// arguments in order, Tensor or optional), its outputs and saved tensors set after.
template <class Op>
class Recording {
 public:
  template <class... Inputs>
  explicit Recording(const Inputs&... inputs) : ptr_(make_node_ptr<Op>()) {
    static_assert(sizeof...(Inputs) == Op::kInputs, "one edge per differentiable argument");
    const auto& functorch = at::functorch::functorchTLSAccessor();
    if (functorch) {
      functorch->checkSupportsCppAutogradFunction();
    }
    ptr_->set_next_edges(torch::autograd::collect_next_edges(inputs...));
  }

  // The op's differentiable outputs, in the order of the backward's incoming gradients.
  void outputs(std::initializer_list<std::reference_wrapper<const at::Tensor>> tensors) {
    for (const at::Tensor& tensor : tensors) {
      torch::autograd::set_history(tensor, ptr_);
    }
  }

  // Saved tensor i; `is_output`: one of this node's outputs (after outputs()).
  void save(size_t i, const at::Tensor& tensor, bool is_output = false) {
    node().saved_[i] = torch::autograd::SavedVariable(tensor, is_output);
    node().saved_is_output_[i] = is_output;
  }

  Constants<Op>& constants() {
    return node().constants_;
  }

 private:
  FusedNode<Op>& node() {
    return static_cast<FusedNode<Op>&>(*ptr_);
  }

  NodePtr ptr_;
};

}  // namespace fastelbo
