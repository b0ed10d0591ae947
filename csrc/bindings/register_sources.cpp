// Sources and their channels.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <memory>
#include <optional>
#include <string>

#include "greenml/model_source.hpp"
#include "greenml/nvml_source.hpp"
#include "greenml/rapl_source.hpp"
#include "greenml/source.hpp"

namespace py = pybind11;
using namespace greenml;

namespace {
const char* kind_name(ChannelKind k) { return k == ChannelKind::counter ? "counter" : "power"; }
}  // namespace

void register_sources(py::module_& m) {
  py::class_<ChannelInfo>(m, "ChannelInfo", "One readable channel of a source.")
      .def_readonly("domain", &ChannelInfo::domain, "Domain key, e.g. 'package:0' or 'gpu:1'.")
      .def_readonly("source", &ChannelInfo::source, "'rapl' or 'nvml'.")
      .def_readonly("measured", &ChannelInfo::measured, "False for modelled domains.")
      .def_readonly("in_total", &ChannelInfo::in_total,
                    "False for zones contained in another (core, uncore, psys).")
      .def_property_readonly("kind", [](const ChannelInfo& c) { return kind_name(c.kind); },
                             "'counter' (cumulative energy) or 'power' (instantaneous power).")
      .def_readonly("unit", &ChannelInfo::unit, "Raw unit: 'uj', 'mj' or 'mw'.")
      .def_readonly("to_si", &ChannelInfo::to_si, "Factor from the raw unit to J or W.")
      .def_readonly("max_raw", &ChannelInfo::max_raw,
                    "Largest raw counter value before it wraps to 0 (modulus max_raw + 1); "
                    "0 = never wraps.")
      .def_readonly("max_power_w", &ChannelInfo::max_power_w,
                    "Most power (W) the channel can plausibly draw (enforced limit or zone "
                    "maximum where known); 0 = unknown.")
      .def_readonly("power_window_ns", &ChannelInfo::power_window_ns,
                    "Power channels: each reading is the mean over this trailing window (ns); "
                    "0 = instantaneous; -1 = unknown, or not a power channel.")
      .def_readonly("detail", &ChannelInfo::detail,
                    "Zone path or device name and UUID; for a modelled domain, its assumptions.")
      .def_readonly("uuid", &ChannelInfo::uuid,
                    "GPU UUID as NVML spells it ('GPU-...'); empty for host-level domains.")
      .def_readonly("rel_uncertainty", &ChannelInfo::rel_uncertainty,
                    "Relative error bound of a modelled channel (0.5 = +/-50%); 0 if measured.")
      .def("__repr__", [](const ChannelInfo& c) {
        return "ChannelInfo(domain='" + c.domain + "', source='" + c.source + "', kind='" +
               kind_name(c.kind) + "', unit='" + c.unit + "')";
      });

  py::class_<DomainStatus>(m, "DomainStatus", "Whether a domain can be measured here, and why not.")
      .def_readonly("domain", &DomainStatus::domain)
      .def_readonly("source", &DomainStatus::source)
      .def_readonly("measured", &DomainStatus::measured)
      .def_readonly("available", &DomainStatus::available)
      .def_readonly("reason", &DomainStatus::reason)
      .def("__repr__", [](const DomainStatus& s) {
        return "DomainStatus(domain='" + s.domain + "', source='" + s.source +
               "', available=" + (s.available ? "True" : "False") + ")";
      });

  py::class_<Source, std::shared_ptr<Source>>(m, "Source", "A hardware reader.")
      .def_property_readonly("name", &Source::name)
      .def("channels", &Source::channels, "The readable channels, in column order.")
      .def("status", &Source::status, "One record per domain this source knows, readable or not.")
      .def_property_readonly("max_safe_period_ns", &Source::max_safe_period_ns,
                             "Longest sampling period that cannot miss a counter wrap.")
      .def(
          "read",
          [](Source& s) {
            const std::size_t n = s.channels().size();
            std::vector<std::uint64_t> raw(n, 0);
            std::unique_ptr<bool[]> ok(new bool[n == 0 ? 1 : n]());
            {
              py::gil_scoped_release release;
              s.read(raw.data(), ok.get());
            }
            std::vector<bool> okv(ok.get(), ok.get() + n);
            return py::make_tuple(raw, okv);
          },
          "One raw read of every channel: (values in raw units, ok flags). For diagnostics; "
          "measurements go through a Sampler.");

  py::class_<RaplSource, Source, std::shared_ptr<RaplSource>>(m, "RaplSource",
                                                             "RAPL counters from a powercap tree.")
      .def(py::init([](const std::string& root, const std::string& missing_hint) {
             py::gil_scoped_release release;
             return std::make_shared<RaplSource>(root, missing_hint);
           }),
           py::arg("root"), py::arg("missing_hint") = "",
           "missing_hint ends the reason given when root holds no RAPL zone.");

  py::class_<NvmlSource, Source, std::shared_ptr<NvmlSource>>(
      m, "NvmlSource", "NVIDIA GPUs through NVML, loaded with dlopen.")
      .def(py::init([](const std::string& library, std::optional<std::string> visible,
                       std::optional<std::string> order,
                       std::optional<std::vector<std::string>> uuids, std::string load_hint,
                       std::string order_hint) {
             NvmlOptions o;
             o.library = library;
             o.cuda_visible_devices = std::move(visible);
             if (order.has_value() && *order == "PCI_BUS_ID") {
               o.cuda_device_order = CudaDeviceOrder::pci_bus_id;
             } else if (order.has_value() && *order != "FASTEST_FIRST") {
               throw py::value_error("cuda_device_order='" + *order +
                                     "' is not a CUDA device order; use 'PCI_BUS_ID', "
                                     "'FASTEST_FIRST' or None (CUDA's default, FASTEST_FIRST)");
             }
             o.cuda_uuids = std::move(uuids);
             o.load_hint = std::move(load_hint);
             o.order_hint = std::move(order_hint);
             py::gil_scoped_release release;
             return std::make_shared<NvmlSource>(std::move(o));
           }),
           py::arg("library"), py::arg("cuda_visible_devices") = py::none(), py::kw_only(),
           py::arg("cuda_device_order") = py::none(), py::arg("cuda_uuids") = py::none(),
           py::arg("load_hint") = "", py::arg("order_hint") = "",
           "cuda_visible_devices and cuda_device_order: the CUDA_VISIBLE_DEVICES and "
           "CUDA_DEVICE_ORDER values the process runs with (None = unset). cuda_uuids: the UUIDs "
           "of cuda:0, cuda:1, ... from the loaded CUDA runtime, which then decide gpu:<i> "
           "outright (None = no runtime to ask). load_hint and order_hint end the reasons "
           "given when the library cannot be loaded and when CUDA's numbering of mixed GPU "
           "models cannot be known.")
      .def(
          "power_limits",
          [](const NvmlSource& s) {
            std::vector<NvmlPowerLimits> lims;
            {
              py::gil_scoped_release release;
              lims = s.power_limits();
            }
            const auto w = [](const std::optional<unsigned int>& mw) -> py::object {
              if (!mw.has_value()) return py::none();
              return py::float_(static_cast<double>(*mw) / 1000.0);
            };
            py::list out;
            for (const auto& l : lims) {
              py::dict d;
              d["domain"] = l.domain;
              d["detail"] = l.detail;
              d["uuid"] = l.uuid;
              d["current_w"] = w(l.current_mw);
              d["default_w"] = w(l.default_mw);
              d["min_w"] = w(l.min_mw);
              d["max_w"] = w(l.max_mw);
              d["enforced_w"] = w(l.enforced_mw);
              d["fixed_reason"] = l.fixed_reason;
              d["reason"] = l.reason;
              out.append(std::move(d));
            }
            return out;
          },
          "Power limits of every gpu:<i>, read only: dicts with domain, detail, uuid, "
          "current_w, default_w, min_w, max_w, enforced_w (W, None when NVML cannot tell), "
          "fixed_reason (why greenml will not change it, else '') and reason (why values are "
          "unknown, else '').")
      .def(
          "set_power_limit",
          [](NvmlSource& s, const std::string& domain, double limit_w) {
            if (!(limit_w > 0.0) || limit_w > 4.0e6) {
              throw py::value_error("limit_w=" + std::to_string(limit_w) +
                                    " is not a power limit in watts");
            }
            const auto mw = static_cast<unsigned int>(std::llround(limit_w * 1000.0));
            NvmlSetResult r;
            {
              py::gil_scoped_release release;
              r = s.set_power_limit(domain, mw);
            }
            return py::make_tuple(r.code, r.message);
          },
          py::arg("domain"), py::arg("limit_w"),
          "Sets gpu:<i>'s power management limit (W, rounded to mW; needs root). Returns "
          "(nvmlReturn_t, message): 0 and '' on success; otherwise nothing was changed and the "
          "message says why and what to do. Values outside the GPU's constraints are refused "
          "without asking NVML.");

  py::class_<ModelSource, Source, std::shared_ptr<ModelSource>>(
      m, "ModelSource",
      "Modelled domains as microjoule counters: cpu:estimated = cpu_idle_w x elapsed time + "
      "cpu_busy_w_per_cpu x busy CPU-seconds (read from busy_path); dram:estimated = dram_w x "
      "elapsed time when dram_w > 0 (with_cpu=False: DRAM only). busy_format: 'proc_stat' (/proc/stat, jiffies), "
      "'cgroup2_stat' (cpu.stat usage_usec) or 'cgroup1_usage' (cpuacct.usage, ns).")
      .def(py::init([](const std::string& busy_path, const std::string& busy_format,
                       double busy_seconds_per_unit, double cpu_idle_w, double cpu_busy_w_per_cpu,
                       double cpu_max_busy_cpus, double cpu_rel_uncertainty,
                       const std::string& cpu_detail, double dram_w,
                       double dram_rel_uncertainty, bool dram_in_total,
                       const std::string& dram_detail, bool with_cpu) {
             ModelSpec spec;
             spec.with_cpu = with_cpu;
             spec.busy_path = busy_path;
             if (busy_format == "proc_stat") {
               spec.busy_format = BusyFormat::proc_stat;
             } else if (busy_format == "cgroup2_stat") {
               spec.busy_format = BusyFormat::cgroup2_stat;
             } else if (busy_format == "cgroup1_usage") {
               spec.busy_format = BusyFormat::cgroup1_usage;
             } else {
               throw py::value_error("busy_format='" + busy_format +
                                     "': use 'proc_stat', 'cgroup2_stat' or 'cgroup1_usage'");
             }
             spec.busy_seconds_per_unit = busy_seconds_per_unit;
             spec.cpu_idle_w = cpu_idle_w;
             spec.cpu_busy_w_per_cpu = cpu_busy_w_per_cpu;
             spec.cpu_max_busy_cpus = cpu_max_busy_cpus;
             spec.cpu_rel_uncertainty = cpu_rel_uncertainty;
             spec.cpu_detail = cpu_detail;
             spec.dram_w = dram_w;
             spec.dram_rel_uncertainty = dram_rel_uncertainty;
             spec.dram_in_total = dram_in_total;
             spec.dram_detail = dram_detail;
             py::gil_scoped_release release;
             return std::make_shared<ModelSource>(std::move(spec));
           }),
           py::arg("busy_path"), py::arg("busy_format"), py::arg("busy_seconds_per_unit"),
           py::arg("cpu_idle_w"), py::arg("cpu_busy_w_per_cpu"), py::arg("cpu_max_busy_cpus"),
           py::arg("cpu_rel_uncertainty") = 0.0, py::arg("cpu_detail") = "",
           py::arg("dram_w") = 0.0, py::arg("dram_rel_uncertainty") = 0.0,
           py::arg("dram_in_total") = true, py::arg("dram_detail") = "",
           py::arg("with_cpu") = true);
}
