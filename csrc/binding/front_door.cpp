// The front door: the public functions' most frequent calls, whole, in C++. fe.gaussian_latent on CPU
// tensors (any prior and n_samples, trailing event dims), fe.bernoulli_log_prob and
// fe.gaussian_log_prob (CPU or CUDA), from the Python arguments to the object the function returns,
// without the Python around the op: the checks of the argument kinds, the backend's resolution, the
// check that the call runs eagerly, the result's construction. At 256 x 8 and 256 x 64 that Python
// cost 2.6 us of a 9.2 us latent call and 1.5 us of an 11 us Bernoulli call with its code in the
// caches, and 5.4 and 2.6 us with it out of them (each call after a compiled step), as it is in a
// training step between a decoder's layers.
//
// Each function does what the Python path does for the calls it takes, and returns None for every
// other call (a tensor subclass, a torch function mode, a torch.func transform, forward-mode AD, a
// backend choice that does not resolve to the C++ kernels' default overload,
// non-trailing event dims, validation mode, ...): the public function then runs its Python path,
// which resolves, checks and names what is wrong. The op's own argument checks (checks.h) raise here
// as there, and the Python function then names the argument (fastelbo/ops/gaussian_latent.py,
// bernoulli_log_prob.py). tests/test_front_door.py holds both paths to the same results.
//
// The Python state the calls depend on is read at each call from the modules that own it (given by
// configure()): fastelbo._backend's process-wide choice, the calling thread's use_backend blocks and
// its table of resolved choices, fastelbo._validate's switch, forward AD's level, torch.compiler's
// flag.
// Dynamo never reaches these functions: the public functions call them only outside its tracing.
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/python_variable.h>
#include <torch/csrc/jit/frontend/tracer.h>
#include <torch/extension.h>

#include <ATen/PythonTorchFunctionTLS.h>

#include <cmath>
#include <memory>
#include <vector>

#include "front_door.h"
#include "op_handles.h"

namespace fastelbo {
namespace front_door {
namespace {

using at::Tensor;
using ops::OptTensor;

// Set once by configure() (under the GIL, with new references held for the process's lifetime).
struct Config {
  PyObject* traced_latent = nullptr;      // fastelbo._types.TracedLatent
  PyObject* backend_globals = nullptr;    // fastelbo._backend.__dict__
  PyObject* validate_globals = nullptr;   // fastelbo._validate.__dict__
  PyObject* forward_ad_globals = nullptr;  // torch.autograd.forward_ad.__dict__
  PyObject* compiler_globals = nullptr;   // torch.compiler.__dict__
  PyObject* functorch_active = nullptr;   // torch._C._are_functorch_transforms_active
  PyObject* params = nullptr;             // the param names, in the kernels' codes' order (a tuple)
  // Interned names: the keys read, the attributes set, the backend "cpu".
  PyObject *global_choice, *thread_state, *dict_attr, *stack_key;
  PyObject *validate_active, *forward_level, *compiling_flag;
  PyObject *resolved, *overload, *default_overload, *cpu, *cuda;
  PyObject *backend_attr, *inputs_attr, *inputs_flat_attr, *event_dim_attr;
};

Config* config = nullptr;

PyObject* intern(const char* s) {
  PyObject* name = PyUnicode_InternFromString(s);
  if (name == nullptr) throw python_error();
  return name;
}

// A global of a module's dict (borrowed; nullptr when absent).
PyObject* global(PyObject* globals, PyObject* name) {
  PyObject* value = PyDict_GetItemWithError(globals, name);
  if (value == nullptr && PyErr_Occurred()) throw python_error();
  return value;
}

// An exact int's value, or false (not an int, or beyond a long).
bool long_value(PyObject* obj, long& value) {
  if (obj == nullptr || !PyLong_CheckExact(obj)) return false;
  int overflow = 0;
  value = PyLong_AsLongAndOverflow(obj, &overflow);
  return overflow == 0;
}

bool equal_str(PyObject* a, PyObject* b) {
  return a == b || (PyUnicode_CheckExact(a) && PyUnicode_Compare(a, b) == 0);
}

// A new reference that steals `obj` (an owned PyObject*), released unless given away.
struct Owned {
  PyObject* obj;
  explicit Owned(PyObject* o) : obj(o) {
    if (obj == nullptr) throw python_error();
  }
  ~Owned() { Py_XDECREF(obj); }
  PyObject* release() {
    PyObject* o = obj;
    obj = nullptr;
    return o;
  }
};

// The backend of a call on tensors of `device` ("cpu" or "cuda", interned) when it is C++ kernels of
// the default overload: `backend`, or the current choice when it is None, looked up in
// fastelbo._backend's table of resolved choices (_RESOLVED, filled by the Python path's first call).
// nullptr otherwise: an unresolved or other backend, and every state in which resolve() would not
// simply look the choice up (a torch.func transform, forward AD). The choice is read as resolve() reads
// it: the innermost use_backend block of the calling thread (_state.__dict__["stack"]), else the
// process-wide one.
PyObject* cpp_backend(PyObject* backend, PyObject* device) {
  PyObject* globals = config->backend_globals;
  PyObject* choice = backend;
  if (choice == Py_None) {
    PyObject* state = global(globals, config->thread_state);
    if (state == nullptr) return nullptr;
    Owned thread_dict(PyObject_GetAttr(state, config->dict_attr));  // this thread's (a threading.local)
    PyObject* stack = PyDict_Check(thread_dict.obj) ? global(thread_dict.obj, config->stack_key) : nullptr;
    if (stack != nullptr && PyList_CheckExact(stack) && PyList_GET_SIZE(stack) > 0) {
      choice = PyList_GET_ITEM(stack, PyList_GET_SIZE(stack) - 1);
    } else if (stack != nullptr && !PyList_CheckExact(stack)) {
      return nullptr;
    } else {
      choice = global(globals, config->global_choice);
    }
    if (choice == nullptr) return nullptr;
  }
  Owned held_choice(Py_NewRef(choice));  // (a block's entry: its list could change under the calls below)
  long level = 0;
  if (!long_value(global(config->forward_ad_globals, config->forward_level), level) || level >= 0) return nullptr;
  PyObject* active = PyObject_CallNoArgs(config->functorch_active);
  if (active == nullptr) throw python_error();
  const bool transforms = active == Py_True;
  Py_DECREF(active);
  PyObject *resolved_table = global(globals, config->resolved), *overloads = global(globals, config->overload);
  if (transforms || resolved_table == nullptr || overloads == nullptr || !PyUnicode_Check(choice)) return nullptr;
  Owned key_tuple(PyTuple_Pack(2, choice, device));
  PyObject* name = PyDict_GetItemWithError(resolved_table, key_tuple.obj);  // borrowed
  if (name == nullptr) {
    if (PyErr_Occurred()) throw python_error();
    return nullptr;
  }
  PyObject* overload = PyDict_GetItemWithError(overloads, name);
  if (overload == nullptr && PyErr_Occurred()) throw python_error();
  return overload != nullptr && equal_str(overload, config->default_overload) ? name : nullptr;
}

// Whether the call runs as itself (fastelbo/ops/_cpp_calls.py: runs_eagerly), with fastelbo's
// validation mode off: not traced (torch.compile's flag, torch.jit.trace), no torch function mode.
// Every tensor argument is checked to be a plain Tensor (or Parameter) by its caller.
bool eager_and_unvalidated() {
  PyObject* validate = global(config->validate_globals, config->validate_active);
  PyObject* compiling = global(config->compiler_globals, config->compiling_flag);
  return validate == Py_False && compiling == Py_False && !torch::jit::tracer::isTracing() &&
         !at::impl::torch_function_mode_enabled();
}

bool plain_tensor(PyObject* obj) {
  return THPVariable_CheckExact(obj);
}

// An exact int (not a bool) that fits int64, or false.
bool exact_int(PyObject* obj, int64_t& value) {
  if (!PyLong_CheckExact(obj)) return false;
  int overflow = 0;
  value = PyLong_AsLongLongAndOverflow(obj, &overflow);
  if (value == -1 && PyErr_Occurred()) throw python_error();
  return overflow == 0;
}

// The number of trailing event dims that `dim` names for a tensor of `ndim` dims (an int, or a tuple
// or list of ints, negative ones from the end), or 0 where `dim` is anything else: dims that are not
// the trailing ones, out of range, repeated, or not ints (the Python path's layouts and errors).
int64_t trailing_event_dims(PyObject* dim, int64_t ndim) {
  if (ndim < 1 || ndim > 64) return 0;
  PyObject* single[1] = {dim};
  PyObject** items = single;
  Py_ssize_t count = 1;
  if (PyTuple_CheckExact(dim)) {
    items = &PyTuple_GET_ITEM(dim, 0);
    count = PyTuple_GET_SIZE(dim);
  } else if (PyList_CheckExact(dim)) {
    items = &PyList_GET_ITEM(dim, 0);
    count = PyList_GET_SIZE(dim);
  }
  if (count < 1 || count > ndim) return 0;
  uint64_t seen = 0;
  for (Py_ssize_t i = 0; i < count; ++i) {
    int64_t d = 0;
    if (!exact_int(items[i], d) || d < -ndim || d >= ndim) return 0;
    d = d < 0 ? d + ndim : d;
    if (d < ndim - count || (seen >> d) & 1) return 0;  // not among the last `count`, or repeated
    seen |= uint64_t(1) << d;
  }
  return count;
}

PyObject* wrap(const Tensor& t) {
  PyObject* obj = THPVariable_Wrap(t);
  if (obj == nullptr) throw python_error();
  return obj;
}

void set_attr(PyObject* obj, PyObject* name, PyObject* value) {
  if (PyObject_SetAttr(obj, name, value) < 0) throw python_error();
}

// gaussian_latent(mu, scale, param, dim, n_samples, prior, stl, backend) -> TracedLatent or None:
// fastelbo/ops/gaussian_latent.py's _on_cpp_kernels for a call without eps or generator.
PyObject* gaussian_latent(PyObject* /*module*/, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  if (config == nullptr || nargs != 8) Py_RETURN_NONE;
  PyObject *mu_obj = args[0], *scale_obj = args[1], *param = args[2], *dim = args[3], *n_samples_obj = args[4],
           *prior = args[5], *stl_obj = args[6], *backend = args[7];
  if (!plain_tensor(mu_obj) || !plain_tensor(scale_obj) || (stl_obj != Py_True && stl_obj != Py_False)) {
    Py_RETURN_NONE;
  }
  const Tensor& mu = THPVariable_Unpack(mu_obj);
  const Tensor& scale = THPVariable_Unpack(scale_obj);
  int64_t param_code = -1;
  for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(config->params); ++i) {
    if (equal_str(param, PyTuple_GET_ITEM(config->params, i))) {
      param_code = i;
      break;
    }
  }
  int64_t n_samples = 0;
  if (param_code < 0 || (n_samples_obj != Py_None && (!exact_int(n_samples_obj, n_samples) || n_samples < 1))) {
    Py_RETURN_NONE;
  }
  OptTensor prior_mu, prior_scale;
  if (prior != Py_None) {
    if (!(PyTuple_CheckExact(prior) || PyList_CheckExact(prior)) || PySequence_Fast_GET_SIZE(prior) != 2) {
      Py_RETURN_NONE;
    }
    PyObject *pm = PySequence_Fast_GET_ITEM(prior, 0), *ps = PySequence_Fast_GET_ITEM(prior, 1);
    if (!plain_tensor(pm) || !plain_tensor(ps)) Py_RETURN_NONE;
    prior_mu = THPVariable_Unpack(pm);
    prior_scale = THPVariable_Unpack(ps);
  }
  const int64_t event_dims = trailing_event_dims(dim, mu.dim());
  if (event_dims == 0 || !mu.is_cpu() || !eager_and_unvalidated()) Py_RETURN_NONE;
  PyObject* resolved = cpp_backend(backend, config->cpu);
  if (resolved == nullptr) Py_RETURN_NONE;
  // What the latent keeps, taken before the op runs without the GIL (a list argument could change
  // meanwhile): the backend's name, the prior as a tuple (prior_mu, prior_scale) or None, and the
  // event dims as a tuple where there are several.
  Owned name(Py_NewRef(resolved));
  Owned pair(prior == Py_None || PyTuple_CheckExact(prior) ? Py_NewRef(prior) : PyList_AsTuple(prior));
  Owned dims(PyList_CheckExact(dim) ? PyList_AsTuple(dim) : Py_NewRef(dim));
  ops::Tensor5 out;
  {
    pybind11::gil_scoped_release no_gil;
    out = ops::gaussian_latent_op().call(mu, scale, prior_mu, prior_scale, std::nullopt, std::nullopt, param_code,
                                         n_samples, stl_obj == Py_True, event_dims);
  }
  // tuple.__new__(TracedLatent, (z, log_q, log_p, kl)), as the namedtuple's own __new__ makes it
  Owned fields(PyTuple_New(4));
  const Tensor* outputs[4] = {&std::get<0>(out), &std::get<1>(out), &std::get<2>(out), &std::get<3>(out)};
  for (int i = 0; i < 4; ++i) PyTuple_SET_ITEM(fields.obj, i, wrap(*outputs[i]));
  Owned new_args(PyTuple_Pack(1, fields.obj));
  Owned latent(PyTuple_Type.tp_new(reinterpret_cast<PyTypeObject*>(config->traced_latent), new_args.obj, nullptr));
  Owned seed(wrap(std::get<4>(out)));
  // (mu, scale, param, n_samples, prior, eps, seed): what DReG rebuilds log q from
  Owned inputs(PyTuple_Pack(7, mu_obj, scale_obj, param, n_samples_obj, pair.obj, Py_None, seed.obj));
  set_attr(latent.obj, config->backend_attr, name.obj);
  set_attr(latent.obj, config->inputs_attr, inputs.obj);
  if (event_dims > 1) {  // several trailing event dims: the layout is made from mu and dim when read
    set_attr(latent.obj, config->event_dim_attr, dims.obj);
    set_attr(latent.obj, config->inputs_flat_attr, Py_False);
  }
  return latent.release();
  END_HANDLE_TH_ERRORS
}

// Whether a likelihood's call with parameters `params` runs on the C++ kernels: CPU or CUDA tensors,
// eagerly, validation off, on a backend choice resolved to them for that device.
bool on_cpp_kernels(const Tensor& params, PyObject* backend) {
  const c10::DeviceType type = params.device().type();
  return (type == c10::kCPU || type == c10::kCUDA) && eager_and_unvalidated() &&
         cpp_backend(backend, type == c10::kCPU ? config->cpu : config->cuda) != nullptr;
}

// The log-prob (the first output) of a likelihood op's call, made without the GIL.
template <typename Call>
PyObject* log_prob_without_gil(const Call& call) {
  Tensor out;
  {
    pybind11::gil_scoped_release no_gil;
    out = std::get<0>(call());
  }
  return wrap(out);
}

// bernoulli_log_prob(logits, x, event_dims, backend, expected_grad) -> Tensor or None:
// fastelbo/ops/bernoulli_log_prob.py's log_prob_for_loss on the C++ kernels.
PyObject* bernoulli_log_prob(PyObject* /*module*/, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  if (config == nullptr || nargs != 5) Py_RETURN_NONE;
  PyObject *logits_obj = args[0], *x_obj = args[1], *backend = args[3], *expected_obj = args[4];
  int64_t event_dims = 0;
  if (!plain_tensor(logits_obj) || !plain_tensor(x_obj) || !exact_int(args[2], event_dims) ||
      !PyFloat_CheckExact(expected_obj)) {
    Py_RETURN_NONE;
  }
  const Tensor& logits = THPVariable_Unpack(logits_obj);
  const Tensor& x = THPVariable_Unpack(x_obj);
  if (!on_cpp_kernels(logits, backend)) Py_RETURN_NONE;
  const double expected_grad = PyFloat_AS_DOUBLE(expected_obj);
  return log_prob_without_gil([&] {
    const bool need_grad = at::GradMode::is_enabled() && logits.requires_grad();
    return ops::bernoulli_op().call(logits, x, event_dims, need_grad, expected_grad);
  });
  END_HANDLE_TH_ERRORS
}

// gaussian_log_prob(mean, x, logvar, event_dims, backend, expected_grad) -> Tensor or None:
// fastelbo/ops/gaussian_log_prob.py's log_prob_for_loss on the C++ kernels, logvar a tensor or a
// finite number (an int or a float, not a bool).
PyObject* gaussian_log_prob(PyObject* /*module*/, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  if (config == nullptr || nargs != 6) Py_RETURN_NONE;
  PyObject *mean_obj = args[0], *x_obj = args[1], *logvar_obj = args[2], *backend = args[4], *expected_obj = args[5];
  int64_t event_dims = 0;
  if (!plain_tensor(mean_obj) || !plain_tensor(x_obj) || !exact_int(args[3], event_dims) ||
      !PyFloat_CheckExact(expected_obj)) {
    Py_RETURN_NONE;
  }
  OptTensor logvar;
  double logvar_value = 0.0;
  int64_t logvar_int = 0;
  if (plain_tensor(logvar_obj)) {
    logvar = THPVariable_Unpack(logvar_obj);
  } else if (PyFloat_CheckExact(logvar_obj)) {
    logvar_value = PyFloat_AS_DOUBLE(logvar_obj);
  } else if (exact_int(logvar_obj, logvar_int)) {
    logvar_value = static_cast<double>(logvar_int);
  } else {
    Py_RETURN_NONE;
  }
  if (!std::isfinite(logvar_value)) Py_RETURN_NONE;  // (the Python check's message names it)
  const Tensor& mean = THPVariable_Unpack(mean_obj);
  const Tensor& x = THPVariable_Unpack(x_obj);
  if (!on_cpp_kernels(mean, backend)) Py_RETURN_NONE;
  const double expected_grad = PyFloat_AS_DOUBLE(expected_obj);
  return log_prob_without_gil([&] {
    const bool need_grad = at::GradMode::is_enabled() &&
                           (mean.requires_grad() || x.requires_grad() || (logvar && logvar->requires_grad()));
    return ops::gaussian_op().call(mean, x, logvar, logvar_value, event_dims, need_grad, expected_grad);
  });
  END_HANDLE_TH_ERRORS
}

// configure(traced_latent, backend_module, validate_module, forward_ad_module, compiler_module,
//           functorch_active, params)
PyObject* configure(PyObject* /*module*/, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  TORCH_CHECK(nargs == 7, "configure takes 7 arguments");
  TORCH_CHECK(PyType_Check(args[0]) && PyType_IsSubtype(reinterpret_cast<PyTypeObject*>(args[0]), &PyTuple_Type),
              "configure: the latent type must be a tuple subclass");
  TORCH_CHECK(PyTuple_CheckExact(args[6]), "configure: params must be a tuple");
  if (config != nullptr) Py_RETURN_NONE;  // configured once per process (the library loads once)
  auto c = std::make_unique<Config>();
  c->traced_latent = Py_NewRef(args[0]);
  PyObject** dicts[] = {&c->backend_globals, &c->validate_globals, &c->forward_ad_globals, &c->compiler_globals};
  for (int i = 0; i < 4; ++i) {
    PyObject* d = PyModule_GetDict(args[1 + i]);  // borrowed
    if (d == nullptr) throw python_error();
    *dicts[i] = Py_NewRef(d);
  }
  c->functorch_active = Py_NewRef(args[5]);
  c->params = Py_NewRef(args[6]);
  c->global_choice = intern("_global_choice");
  c->thread_state = intern("_state");
  c->dict_attr = intern("__dict__");
  c->stack_key = intern("stack");
  c->validate_active = intern("active");
  c->forward_level = intern("_current_level");
  c->compiling_flag = intern("_is_compiling_flag");
  c->backend_attr = intern("backend");
  c->inputs_attr = intern("inputs");
  c->inputs_flat_attr = intern("inputs_flat");
  c->event_dim_attr = intern("event_dim");
  c->resolved = intern("_RESOLVED");
  c->overload = intern("OVERLOAD");
  c->default_overload = intern("default");
  c->cpu = intern("cpu");
  c->cuda = intern("cuda");
  config = c.release();
  Py_RETURN_NONE;
  END_HANDLE_TH_ERRORS
}

PyMethodDef methods[] = {
    {"front_gaussian_latent", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(gaussian_latent)),
     METH_FASTCALL, "fe.gaussian_latent's common call (csrc/binding/front_door.cpp), or None"},
    {"front_bernoulli_log_prob", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(bernoulli_log_prob)),
     METH_FASTCALL, "fe.bernoulli_log_prob's common call (csrc/binding/front_door.cpp), or None"},
    {"front_gaussian_log_prob", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(gaussian_log_prob)),
     METH_FASTCALL, "fe.gaussian_log_prob's common call (csrc/binding/front_door.cpp), or None"},
    {"front_configure", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(configure)), METH_FASTCALL,
     "the Python state the front door reads (fastelbo/ops/_cpp_calls.py)"},
    {nullptr, nullptr, 0, nullptr}};

}  // namespace

void add_to(PyObject* module) {
  if (PyModule_AddFunctions(module, methods) < 0) throw python_error();
}

}  // namespace front_door
}  // namespace fastelbo
