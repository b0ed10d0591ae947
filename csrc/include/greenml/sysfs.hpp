// Reading small numeric sysfs files without allocation on the hot path.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace greenml {

// Parses an unsigned decimal as sysfs prints it: optional surrounding
// whitespace and trailing newline. Rejects empty text, signs, garbage and
// values that overflow 64 bits.
[[nodiscard]] std::optional<std::uint64_t> parse_u64(std::string_view text) noexcept;

// text without surrounding whitespace (spaces, tabs, newlines).
[[nodiscard]] std::string_view trim_view(std::string_view text) noexcept;

// Reads a whole small file; nullopt with errno preserved when it cannot.
[[nodiscard]] std::optional<std::string> read_text_file(const std::string& path);

// A file kept open and re-read from offset 0 with pread: one syscall per read.
class OpenCounterFile {
 public:
  OpenCounterFile() = default;
  explicit OpenCounterFile(const std::string& path) noexcept;
  ~OpenCounterFile();
  OpenCounterFile(OpenCounterFile&& other) noexcept;
  OpenCounterFile& operator=(OpenCounterFile&& other) noexcept;
  OpenCounterFile(const OpenCounterFile&) = delete;
  OpenCounterFile& operator=(const OpenCounterFile&) = delete;

  [[nodiscard]] bool is_open() const noexcept { return fd_ >= 0; }
  [[nodiscard]] int open_errno() const noexcept { return open_errno_; }
  // One pread + parse. nullopt when the read or the parse fails.
  [[nodiscard]] std::optional<std::uint64_t> read_u64() const noexcept;
  // One pread of at most `size` bytes from offset 0, for files with several
  // fields (/proc/stat, cgroup cpu.stat). The bytes read, or nullopt when the
  // read fails or the file is empty.
  [[nodiscard]] std::optional<std::size_t> read_prefix(char* buf, std::size_t size) const noexcept;

 private:
  int fd_ = -1;
  int open_errno_ = 0;
};

}  // namespace greenml
