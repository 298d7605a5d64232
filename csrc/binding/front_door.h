// The front door (front_door.cpp): the public functions' most frequent calls, whole, in C++.
#pragma once

#include <Python.h>

namespace fastelbo {
namespace front_door {

// Adds front_gaussian_latent, front_bernoulli_log_prob, front_gaussian_log_prob and front_configure to
// the library's Python module (python.cpp).
void add_to(PyObject* module);

}  // namespace front_door
}  // namespace fastelbo
