// greenml._core: the native sampler and its sources. Each register_*.cpp
// binds one area; this file only assembles the module.
#include <pybind11/pybind11.h>

namespace py = pybind11;

void register_sources(py::module_& m);
void register_sampler(py::module_& m);

PYBIND11_MODULE(_core, m) {
  m.doc() = "Native energy sampling core of greenml (sources, sampler, ring buffer).";
#ifdef GREENML_VERSION
  m.attr("__version__") = GREENML_VERSION;
#endif
  register_sources(m);
  register_sampler(m);
}
