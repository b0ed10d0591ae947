// The sampler: lifecycle, synchronous reads and snapshot reads into numpy.
// Raw integers from the ring become SI floats here, at the boundary.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <limits>
#include <memory>
#include <vector>

#include "greenml/sampler.hpp"

namespace py = pybind11;
using namespace greenml;

namespace {

// Converts n raw rows into (energy_j[n, C], power_w[n, C]); power is NaN for
// counter channels.
std::pair<py::array_t<double>, py::array_t<double>> to_si(const Sampler& s, std::size_t n,
                                                           const std::uint64_t* rows) {
  const ColumnLayout& l = s.layout();
  const std::size_t c = s.channels().size();
  py::array_t<double> energy({n, c});
  py::array_t<double> power({n, c});
  auto e = energy.mutable_unchecked<2>();
  auto p = power.mutable_unchecked<2>();
  const double nan = std::numeric_limits<double>::quiet_NaN();
  for (std::size_t k = 0; k < n; ++k) {
    const std::uint64_t* row = rows + k * l.width;
    for (std::size_t i = 0; i < c; ++i) {
      e(k, i) = static_cast<double>(row[i]) * l.energy_to_joules[i];
      const int pc = l.power_column[i];
      p(k, i) = pc < 0 ? nan : static_cast<double>(row[pc]) * l.power_to_watts[i];
    }
  }
  return {energy, power};
}

}  // namespace

void register_sampler(py::module_& m) {
  m.def("monotonic_ns", &monotonic_ns, "CLOCK_MONOTONIC in ns (the clock of every sample).");

  py::class_<Sampler, std::shared_ptr<Sampler>>(
      m, "Sampler",
      "One native thread that samples every source on an absolute deadline grid into a ring.")
      .def(py::init([](std::vector<std::shared_ptr<Source>> sources, std::int64_t period_ns,
                       std::size_t capacity) {
             py::gil_scoped_release release;
             return std::make_shared<Sampler>(std::move(sources), period_ns, capacity);
           }),
           py::arg("sources"), py::arg("period_ns") = 10'000'000, py::arg("capacity") = 1 << 16)
      .def("start", &Sampler::start, py::call_guard<py::gil_scoped_release>())
      .def("stop", &Sampler::stop, py::call_guard<py::gil_scoped_release>())
      .def("pause", &Sampler::pause, py::call_guard<py::gil_scoped_release>())
      .def("resume", &Sampler::resume, py::call_guard<py::gil_scoped_release>())
      .def_property("period_ns", &Sampler::period_ns, &Sampler::set_period_ns)
      .def_property_readonly("max_safe_period_ns", &Sampler::max_safe_period_ns)
      .def_property_readonly("capacity", [](const Sampler& s) { return s.ring().capacity(); })
      .def_property_readonly("head", [](const Sampler& s) { return s.ring().head(); },
                             "Number of samples ever pushed (the next sample's index).")
      .def("channels", &Sampler::channels)
      .def("status", &Sampler::status)
      .def("warnings", &Sampler::warnings)
      .def(
          "read_now",
          [](Sampler& s) {
            std::vector<std::uint64_t> row(s.layout().width);
            std::int64_t t = 0;
            std::uint64_t index = 0;
            {
              py::gil_scoped_release release;
              index = s.read_now(&t, row.data());
            }
            auto [energy, power] = to_si(s, 1, row.data());
            const auto c = static_cast<py::ssize_t>(s.channels().size());
            return py::make_tuple(index, t, energy.reshape({c}), power.reshape({c}));
          },
          "Reads every source now and records the sample in the ring. Returns (index, t_ns, "
          "energy_j[C], power_w[C]); energy is cumulative since the sampler was created, power "
          "is NaN for counter channels.")
      .def(
          "latest",
          [](const Sampler& s) -> py::object {
            std::vector<std::uint64_t> row(s.layout().width);
            std::int64_t t = 0;
            std::uint64_t index = 0;
            if (!s.ring().latest(&t, row.data(), &index)) return py::none();
            auto [energy, power] = to_si(s, 1, row.data());
            const auto c = static_cast<py::ssize_t>(s.channels().size());
            return py::make_tuple(index, t, energy.reshape({c}), power.reshape({c}));
          },
          "The newest sample in the ring as (index, t_ns, energy_j[C], power_w[C]), or None "
          "when the ring is empty. No I/O: it copies one slot.")
      .def(
          "read",
          [](const Sampler& s, std::uint64_t from_index, std::size_t max_samples) {
            const SampleRing& ring = s.ring();
            const std::size_t width = s.layout().width;
            const std::uint64_t head = ring.head();
            std::size_t n = 0;
            if (head > from_index) n = static_cast<std::size_t>(head - from_index);
            n = std::min({n, ring.capacity(), max_samples});
            std::vector<std::int64_t> times(n);
            std::vector<std::uint64_t> rows(n * width);
            SampleRing::ReadResult r;
            {
              py::gil_scoped_release release;
              r = ring.read(from_index, n, times.data(), rows.data());
            }
            py::array_t<std::int64_t> t(static_cast<py::ssize_t>(r.copied), times.data());
            auto [energy, power] = to_si(s, r.copied, rows.data());
            return py::make_tuple(t, energy, power, r.next, r.lost);
          },
          py::arg("from_index"), py::arg("max_samples") = std::numeric_limits<std::size_t>::max(),
          "Copies samples with index >= from_index, oldest first, without blocking the sampler. "
          "Returns (t_ns[n], energy_j[n, C], power_w[n, C], next_index, lost): pass next_index "
          "as from_index next time; lost counts samples overwritten before they could be read.")
      .def(
          "read_indexed",
          [](const Sampler& s, std::uint64_t from_index, std::size_t max_samples) {
            const SampleRing& ring = s.ring();
            const std::size_t width = s.layout().width;
            const std::uint64_t head = ring.head();
            std::size_t n = head > from_index ? static_cast<std::size_t>(head - from_index) : 0;
            n = std::min({n, ring.capacity(), max_samples});
            std::vector<std::int64_t> times(n);
            std::vector<std::uint64_t> indices(n);
            std::vector<std::uint64_t> rows(n * width);
            SampleRing::ReadResult r;
            {
              py::gil_scoped_release release;
              r = ring.read(from_index, n, times.data(), rows.data(), indices.data());
            }
            const auto copied = static_cast<py::ssize_t>(r.copied);
            py::array_t<std::int64_t> t(copied, times.data());
            py::array_t<std::int64_t> idx(copied, reinterpret_cast<const std::int64_t*>(indices.data()));
            auto [energy, power] = to_si(s, r.copied, rows.data());
            return py::make_tuple(idx, t, energy, power, r.next, r.lost);
          },
          py::arg("from_index"), py::arg("max_samples") = std::numeric_limits<std::size_t>::max(),
          "Like read(), with each sample's ring index first: (index[n], t_ns[n], energy_j[n, C], "
          "power_w[n, C], next_index, lost).")
      .def("stats", [](const Sampler& s) {
        const SamplerStats st = s.stats();
        py::dict d;
        d["samples"] = st.samples;
        d["manual_samples"] = st.manual_samples;
        d["missed_deadlines"] = st.missed_deadlines;
        d["failed_reads"] = st.failed_reads;
        d["failed_reads_per_channel"] = st.failed_reads_per_channel;
        d["max_lateness_ns"] = st.max_lateness_ns;
        d["thread_cpu_ns"] = st.thread_cpu_ns;
        d["running"] = st.running;
        d["paused"] = st.paused;
        return d;
      });
}
