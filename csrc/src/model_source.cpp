#include "greenml/model_source.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace greenml {

std::optional<std::uint64_t> parse_proc_stat_busy(std::string_view text) noexcept {
  // "cpu  user nice system idle iowait irq softirq steal guest guest_nice"
  if (text.size() < 4 || text.compare(0, 4, "cpu ") != 0) return std::nullopt;
  text.remove_prefix(4);
  std::uint64_t fields[7] = {};
  for (int i = 0; i < 7; ++i) {
    while (!text.empty() && text.front() == ' ') text.remove_prefix(1);
    std::size_t n = 0;
    while (n < text.size() && text[n] >= '0' && text[n] <= '9') ++n;
    if (n == 0) {
      if (i >= 5) break;  // very old kernels have no irq/softirq fields: they count as 0
      return std::nullopt;
    }
    const auto v = parse_u64(text.substr(0, n));
    if (!v) return std::nullopt;
    fields[i] = *v;
    text.remove_prefix(n);
  }
  // idle (3) and iowait (4) are not busy; guest time is already inside user.
  return fields[0] + fields[1] + fields[2] + fields[5] + fields[6];
}

ModelSource::ModelSource(const std::string& stat_path, double joules_per_busy_jiffy,
                         std::string detail)
    : path_(stat_path) {
  DomainStatus st{"cpu:estimated", "model", false, false, ""};
  fd_ = ::open(stat_path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd_ < 0) {
    st.reason = "cannot read " + stat_path + ": " + std::strerror(errno);
  } else if (!(joules_per_busy_jiffy > 0)) {
    st.reason = "no CPU power figure for the model (set GREENML_CPU_TDP_W)";
  } else {
    std::uint64_t raw = 0;
    bool ok = false;
    channels_.push_back({});  // read() needs the channel to exist
    read(&raw, &ok);
    if (!ok) {
      channels_.clear();
      st.reason = "cannot parse the aggregate cpu line of " + stat_path;
    } else {
      ChannelInfo& ch = channels_.back();
      ch.domain = "cpu:estimated";
      ch.source = "model";
      ch.measured = false;
      ch.in_total = true;
      ch.kind = ChannelKind::counter;
      ch.unit = "jiffies";
      ch.to_si = joules_per_busy_jiffy;
      ch.max_raw = 0;
      ch.detail = std::move(detail);
      st.available = true;
    }
  }
  status_.push_back(st);
}

ModelSource::~ModelSource() {
  if (fd_ >= 0) ::close(fd_);
}

void ModelSource::read(std::uint64_t* raw, bool* ok) noexcept {
  if (channels_.empty()) return;
  // The aggregate line comes first; 256 bytes hold it even with huge counters.
  char buf[256];
  ssize_t n;
  do {
    n = ::pread(fd_, buf, sizeof buf, 0);
  } while (n < 0 && errno == EINTR);
  std::optional<std::uint64_t> busy;
  if (n > 0) {
    std::string_view text(buf, static_cast<std::size_t>(n));
    const auto eol = text.find('\n');
    if (eol != std::string_view::npos) busy = parse_proc_stat_busy(text.substr(0, eol));
  }
  ok[0] = busy.has_value();
  if (busy) raw[0] = *busy;
}

}  // namespace greenml
