// The sampler: lifecycle, demand, synchronous reads and snapshot reads into
// numpy. Raw integers from the ring become SI floats here, at the boundary.
// No join, no lock that a source read may hold, and no source read happen
// with the GIL held.
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

// n raw rows as SI arrays: (channel_t_ns[n, C], energy_j[n, C], power_w[n, C]);
// power is NaN for counter channels.
struct SiRows {
  py::array_t<std::int64_t> channel_t;
  py::array_t<double> energy;
  py::array_t<double> power;
};

SiRows to_si(const Sampler& s, std::size_t n, const std::uint64_t* rows) {
  const ColumnLayout& l = s.layout();
  const std::size_t c = s.channels().size();
  SiRows out{py::array_t<std::int64_t>({n, c}), py::array_t<double>({n, c}),
             py::array_t<double>({n, c})};
  auto ct = out.channel_t.mutable_unchecked<2>();
  auto e = out.energy.mutable_unchecked<2>();
  auto p = out.power.mutable_unchecked<2>();
  const double nan = std::numeric_limits<double>::quiet_NaN();
  for (std::size_t k = 0; k < n; ++k) {
    const std::uint64_t* row = rows + k * l.width;
    for (std::size_t i = 0; i < c; ++i) {
      ct(k, i) = static_cast<std::int64_t>(row[l.time_column[i]]);
      e(k, i) = static_cast<double>(row[i]) * l.energy_to_joules[i];
      const int pc = l.power_column[i];
      p(k, i) = pc < 0 ? nan : static_cast<double>(row[pc]) * l.power_to_watts[i];
    }
  }
  return out;
}

// One sample as (index, t_ns, energy_j[C], power_w[C], channel_t_ns[C]).
py::tuple one_sample(const Sampler& s, std::uint64_t index, std::int64_t t,
                     const std::vector<std::uint64_t>& row) {
  SiRows si = to_si(s, 1, row.data());
  const auto c = static_cast<py::ssize_t>(s.channels().size());
  return py::make_tuple(index, t, si.energy.reshape({c}), si.power.reshape({c}),
                        si.channel_t.reshape({c}));
}

// Copies samples [from_index, ...) out of the ring with the GIL released.
py::tuple read_indexed(const Sampler& s, std::uint64_t from_index, std::size_t max_samples) {
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
  SiRows si = to_si(s, r.copied, rows.data());
  return py::make_tuple(idx, t, si.energy, si.power, r.next, r.lost, si.channel_t);
}

py::tuple history_rows(const Sampler& s, std::int64_t from_ns, std::int64_t to_ns) {
  HistoryRows h;
  {
    py::gil_scoped_release release;
    h = s.history(from_ns, to_ns);
  }
  const auto n = static_cast<py::ssize_t>(h.t.size());
  py::array_t<std::int64_t> idx(n, reinterpret_cast<const std::int64_t*>(h.index.data()));
  py::array_t<std::int64_t> t(n, h.t.data());
  SiRows si = to_si(s, h.t.size(), h.values.data());
  return py::make_tuple(idx, t, si.energy, si.power, si.channel_t);
}

py::dict stats_dict(const Sampler& s) {
  SamplerStats st;
  {
    py::gil_scoped_release release;
    st = s.stats();
  }
  py::dict d;
  d["samples"] = st.samples;
  d["reads"] = st.reads;
  d["manual_samples"] = st.manual_samples;
  d["missed_deadlines"] = st.missed_deadlines;
  d["failed_reads"] = st.failed_reads;
  d["failed_reads_per_channel"] = st.failed_reads_per_channel;
  d["max_lateness_ns"] = st.max_lateness_ns;
  d["thread_cpu_ns"] = st.thread_cpu_ns;
  d["events_dropped"] = st.events_dropped;
  d["running"] = st.running;
  d["paused"] = st.paused;
  d["full_rate"] = st.full_rate;
  d["history_rows"] = s.history_size();
  d["history_period_ns"] = s.history_period_ns();
  return d;
}

const char* event_name(EventKind k) {
  switch (k) {
    case EventKind::counter_reset:
      return "counter_reset";
    case EventKind::possibly_missed_wraps:
      return "possibly_missed_wraps";
    case EventKind::read_failed:
      return "read_failed";
    case EventKind::read_recovered:
      return "read_recovered";
  }
  return "unknown";
}

py::tuple events_list(const Sampler& s, std::uint64_t from) {
  std::vector<SamplerEvent> ev;
  std::uint64_t next = 0;
  {
    py::gil_scoped_release release;
    ev = s.events(from, &next);
  }
  py::list out;
  for (const auto& e : ev) {
    out.append(py::make_tuple(e.t_ns, e.since_ns, s.channels()[e.channel].domain, event_name(e.kind)));
  }
  return py::make_tuple(out, next);
}

// The destructor stops and joins the thread: never with the GIL held.
std::shared_ptr<Sampler> make_sampler(std::vector<std::shared_ptr<Source>> sources,
                                      std::int64_t period_ns, std::size_t capacity,
                                      std::int64_t idle_period_ns, std::int64_t history_period_ns,
                                      std::size_t history_rows) {
  SamplerOptions o;
  o.period_ns = period_ns;
  o.capacity = capacity;
  o.idle_period_ns = idle_period_ns;
  o.history_period_ns = history_period_ns;
  o.history_rows = history_rows;
  Sampler* raw = nullptr;
  {
    py::gil_scoped_release release;
    raw = new Sampler(std::move(sources), std::move(o));
  }
  return std::shared_ptr<Sampler>(raw, [](Sampler* s) {
    if (PyGILState_Check() != 0) {
      py::gil_scoped_release release;
      delete s;
    } else {
      delete s;
    }
  });
}

}  // namespace

void register_sampler(py::module_& m) {
  m.def("monotonic_ns", &monotonic_ns, "CLOCK_MONOTONIC in ns (the clock of every sample).");

  py::class_<Sampler, std::shared_ptr<Sampler>>(
      m, "Sampler",
      "One native thread that reads every source into a ring: at period_ns while something "
      "needs full rate (demand, a recent touch), else every idle_period_ns (0 = always full "
      "rate), and always often enough to see every counter wrap.")
      .def(py::init(&make_sampler), py::arg("sources"), py::arg("period_ns") = 10'000'000,
           py::arg("capacity") = 1 << 16, py::arg("idle_period_ns") = 0,
           py::arg("history_period_ns") = 0, py::arg("history_rows") = 1 << 15,
           "ValueError when a period is outside [50000, 3600e9] ns (idle and history periods: "
           "or 0 = off), capacity outside [2, 2**26] or history_rows outside [2, 2**22].")
      .def("start", &Sampler::start, py::call_guard<py::gil_scoped_release>())
      .def("stop", &Sampler::stop, py::call_guard<py::gil_scoped_release>())
      .def("pause", &Sampler::pause, py::call_guard<py::gil_scoped_release>())
      .def("resume", &Sampler::resume, py::call_guard<py::gil_scoped_release>())
      .def("touch", &Sampler::touch, py::arg("hold_ns"),
           "A window edge happened: full rate until now + hold_ns (wakes an idle thread, which "
           "samples at once).")
      .def("add_demand", &Sampler::add_demand, py::arg("delta"),
           "Adds delta to the full-rate demand count (full rate while it is positive).")
      .def_property(
          "period_ns", &Sampler::period_ns,
          [](Sampler& s, std::int64_t p) {
            py::gil_scoped_release release;
            s.set_period_ns(p);
          })
      .def_property_readonly("idle_period_ns", &Sampler::idle_period_ns)
      .def_property_readonly("max_safe_period_ns", &Sampler::max_safe_period_ns)
      .def_property_readonly("capacity", [](const Sampler& s) { return s.ring().capacity(); })
      .def_property_readonly("head", [](const Sampler& s) { return s.ring().head(); },
                             "Number of samples ever pushed (the next sample's index).")
      .def("channels", &Sampler::channels)
      .def("status", &Sampler::status)
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
            return one_sample(s, index, t, row);
          },
          "Reads every source now and records the sample in the ring. Returns (index, t_ns, "
          "energy_j[C], power_w[C], channel_t_ns[C]); energy is cumulative since the sampler was "
          "created, power is NaN for counter channels, channel_t_ns is when each channel's "
          "source was read.")
      .def(
          "edge_read",
          [](Sampler& s) {
            std::int64_t t = 0;
            std::uint64_t index = 0;
            {
              py::gil_scoped_release release;
              index = s.edge_read(&t);
            }
            return py::make_tuple(index, t);
          },
          "A window edge: reads the cheap sources (RAPL, the model) now and pushes a sample in "
          "which the others keep their last values and read times. Returns (index, t_ns): the "
          "sample's index and the cheap sources' read time, the edge's exact time.")
      .def_property_readonly("has_cheap_edge_sources", &Sampler::has_cheap_edge_sources)
      .def(
          "latest",
          [](const Sampler& s) -> py::object {
            std::vector<std::uint64_t> row(s.layout().width);
            std::int64_t t = 0;
            std::uint64_t index = 0;
            if (!s.ring().latest(&t, row.data(), &index)) return py::none();
            return one_sample(s, index, t, row);
          },
          "The newest sample in the ring as (index, t_ns, energy_j[C], power_w[C], "
          "channel_t_ns[C]) with the index of the sample copied, or None when the ring is empty. "
          "No I/O.")
      .def("read_indexed", &read_indexed, py::arg("from_index"),
           py::arg("max_samples") = std::numeric_limits<std::size_t>::max(),
           "Copies samples with index >= from_index, oldest first, without blocking the sampler. "
           "Returns (index[n], t_ns[n], energy_j[n, C], power_w[n, C], next_index, lost, "
           "channel_t_ns[n, C]): pass next_index as from_index next time; lost counts samples "
           "overwritten before they could be read.")
      .def(
          "read",
          [](const Sampler& s, std::uint64_t from_index, std::size_t max_samples) {
            py::tuple r = read_indexed(s, from_index, max_samples);
            return py::make_tuple(r[1], r[2], r[3], r[4], r[5]);
          },
          py::arg("from_index"), py::arg("max_samples") = std::numeric_limits<std::size_t>::max(),
          "Like read_indexed() without the indices and channel times: (t_ns[n], energy_j[n, C], "
          "power_w[n, C], next_index, lost).")
      .def("history", &history_rows, py::arg("from_ns"), py::arg("to_ns"),
           "Run-long history rows with t in [from_ns, to_ns] plus one row on each side, as "
           "(index[n], t_ns[n], energy_j[n, C], power_w[n, C], channel_t_ns[n, C]).")
      .def_property_readonly("history_capacity", &Sampler::history_capacity,
                             "Most history rows kept (memory: rows x (values per sample + 2) x 8 "
                             "bytes).")
      .def("events", &events_list, py::arg("from_index") = 0,
           "Events seen on channels (counter_reset, possibly_missed_wraps, read_failed, "
           "read_recovered) as ([(t_ns, since_ns, domain, kind)], next_index); the event lies "
           "between since_ns and t_ns.")
      .def("stats", &stats_dict, "Counters of the thread's work (lock-free).");
}
