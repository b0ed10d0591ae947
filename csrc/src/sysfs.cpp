#include "greenml/sysfs.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <fstream>
#include <sstream>

namespace greenml {

std::string_view trim_view(std::string_view text) noexcept {
  auto is_space = [](char c) { return c == ' ' || c == '\n' || c == '\t' || c == '\r'; };
  while (!text.empty() && is_space(text.front())) text.remove_prefix(1);
  while (!text.empty() && is_space(text.back())) text.remove_suffix(1);
  return text;
}

std::optional<std::uint64_t> parse_u64(std::string_view text) noexcept {
  text = trim_view(text);
  if (text.empty()) return std::nullopt;
  std::uint64_t value = 0;
  for (char c : text) {
    if (c < '0' || c > '9') return std::nullopt;
    const auto digit = static_cast<std::uint64_t>(c - '0');
    if (value > (UINT64_MAX - digit) / 10) return std::nullopt;  // would overflow
    value = value * 10 + digit;
  }
  return value;
}

std::optional<std::string> read_text_file(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return std::nullopt;
  std::string out;
  char buf[4096];
  for (;;) {
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) continue;
      const int saved = errno;
      ::close(fd);
      errno = saved;
      return std::nullopt;
    }
    if (n == 0) break;
    out.append(buf, static_cast<std::size_t>(n));
    if (out.size() > (1u << 20)) break;  // sysfs attributes are tiny; refuse to slurp more
  }
  ::close(fd);
  return out;
}

OpenCounterFile::OpenCounterFile(const std::string& path) noexcept {
  fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd_ < 0) open_errno_ = errno;
}

OpenCounterFile::~OpenCounterFile() {
  if (fd_ >= 0) ::close(fd_);
}

OpenCounterFile::OpenCounterFile(OpenCounterFile&& other) noexcept
    : fd_(other.fd_), open_errno_(other.open_errno_) {
  other.fd_ = -1;
}

OpenCounterFile& OpenCounterFile::operator=(OpenCounterFile&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = other.fd_;
    open_errno_ = other.open_errno_;
    other.fd_ = -1;
  }
  return *this;
}

std::optional<std::uint64_t> OpenCounterFile::read_u64() const noexcept {
  if (fd_ < 0) return std::nullopt;
  char buf[32];  // 20 digits of uint64 plus newline fit; longer content is garbage
  ssize_t n;
  do {
    n = ::pread(fd_, buf, sizeof buf, 0);
  } while (n < 0 && errno == EINTR);
  if (n <= 0 || static_cast<std::size_t>(n) >= sizeof buf) return std::nullopt;
  return parse_u64(std::string_view(buf, static_cast<std::size_t>(n)));
}

std::optional<std::size_t> OpenCounterFile::read_prefix(char* buf, std::size_t size) const noexcept {
  if (fd_ < 0 || size == 0) return std::nullopt;
  ssize_t n;
  do {
    n = ::pread(fd_, buf, size, 0);
  } while (n < 0 && errno == EINTR);
  if (n <= 0) return std::nullopt;
  return static_cast<std::size_t>(n);
}

}  // namespace greenml
