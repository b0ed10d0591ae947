// Test helpers: a private temporary directory, a fake Linux powercap tree
// laid out like /sys/class/powercap, and a way to run a check as an
// unprivileged user (CI runs as root, where file modes do not deny reads).
#pragma once

#include <fcntl.h>
#include <grp.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <optional>
#include <stdexcept>
#include <string>

namespace greenml_test {

namespace fs = std::filesystem;

// A fresh directory under $TMPDIR (or /tmp), removed with everything in it.
class TempDir {
 public:
  TempDir() {
    const char* base = std::getenv("TMPDIR");
    std::string templ = std::string(base && *base ? base : "/tmp") + "/greenml-test-XXXXXX";
    if (::mkdtemp(templ.data()) == nullptr)
      throw std::runtime_error("mkdtemp failed: " + std::string(std::strerror(errno)));
    path_ = templ;
  }
  ~TempDir() {
    std::error_code ec;
    // Children may have been chmod'ed to 000; restore so removal succeeds
    // for a non-root user too.
    for (auto it = fs::recursive_directory_iterator(path_, ec); !ec && it != fs::recursive_directory_iterator();
         it.increment(ec)) {
      if (!it->is_symlink(ec)) fs::permissions(it->path(), fs::perms::owner_all, fs::perm_options::add, ec);
    }
    fs::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  [[nodiscard]] const fs::path& path() const { return path_; }
  [[nodiscard]] std::string str() const { return path_.string(); }

 private:
  fs::path path_;
};

// Writes text to path, replacing the file (truncates in place, so an fd that
// is already open sees the new content at offset 0).
inline void write_file(const fs::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) throw std::runtime_error("cannot write " + path.string());
  out << text;
}

// A powercap tree shaped like the kernel's: real zone directories nested
// under devices/virtual/powercap/<control-type>/, and one symlink per zone
// (subzones included) flat in the class directory, which is root().
//
//   <tmp>/class/powercap/intel-rapl            -> control type (no energy_uj)
//   <tmp>/class/powercap/intel-rapl:0          -> ../../devices/.../intel-rapl/intel-rapl:0
//   <tmp>/class/powercap/intel-rapl:0:0        -> ../../devices/.../intel-rapl/intel-rapl:0/intel-rapl:0:0
//
// Zone directories contain name, energy_uj and max_energy_range_uj.
class PowercapTree {
 public:
  PowercapTree() {
    fs::create_directories(class_dir());
    fs::create_directories(devices_dir());
    // Mode 0755 so an unprivileged child can walk it (see run_as_nobody).
    fs::permissions(dir_.path(), fs::perms::owner_all | fs::perms::group_read | fs::perms::group_exec |
                                     fs::perms::others_read | fs::perms::others_exec);
  }

  // The directory to hand to RaplSource.
  [[nodiscard]] std::string root() const { return class_dir().string(); }

  // Adds a zone. `zone` is the kernel directory name, e.g. "intel-rapl:0" or
  // "intel-rapl:0:1" (a subzone: its parent "intel-rapl:0" must exist) or
  // "intel-rapl-mmio:0". Returns the real zone directory.
  fs::path add_zone(const std::string& zone, const std::string& name, std::uint64_t energy_uj,
                    std::uint64_t max_energy_range_uj = 262143328850ULL) {
    const fs::path dir = zone_dir(zone);
    fs::create_directories(dir);
    write_file(dir / "name", name + "\n");
    write_file(dir / "energy_uj", std::to_string(energy_uj) + "\n");
    write_file(dir / "max_energy_range_uj", std::to_string(max_energy_range_uj) + "\n");
    // The control-type directory itself also shows up in the class dir.
    const std::string type = control_type(zone);
    std::error_code ec;
    if (!fs::exists(class_dir() / type, ec)) {
      write_file(devices_dir() / type / "enabled", "1\n");
      fs::create_directory_symlink(fs::relative(devices_dir() / type, class_dir()), class_dir() / type);
    }
    fs::create_directory_symlink(fs::relative(dir, class_dir()), class_dir() / zone);
    return dir;
  }

  // Directories 0755, files 0644, whatever the umask was: an unprivileged
  // child (run_as_nobody) must be able to walk and read the tree.
  void make_world_readable() const {
    const auto dir_mode = fs::perms::owner_all | fs::perms::group_read | fs::perms::group_exec |
                          fs::perms::others_read | fs::perms::others_exec;
    const auto file_mode = fs::perms::owner_read | fs::perms::owner_write | fs::perms::group_read |
                           fs::perms::others_read;
    fs::permissions(dir_.path(), dir_mode);
    for (const auto& e : fs::recursive_directory_iterator(dir_.path())) {
      if (e.is_symlink()) continue;
      fs::permissions(e.path(), e.is_directory() ? dir_mode : file_mode);
    }
  }

  void set_energy(const std::string& zone, std::uint64_t energy_uj) {
    write_file(zone_dir(zone) / "energy_uj", std::to_string(energy_uj) + "\n");
  }

  [[nodiscard]] fs::path energy_file(const std::string& zone) const { return zone_dir(zone) / "energy_uj"; }

  // The real directory of a zone: subzones nest inside their parent.
  [[nodiscard]] fs::path zone_dir(const std::string& zone) const {
    const std::string type = control_type(zone);
    fs::path dir = devices_dir() / type;
    // "intel-rapl:0:1" -> intel-rapl:0 / intel-rapl:0:1
    std::string prefix = type;
    std::size_t pos = type.size();
    while (pos < zone.size()) {
      std::size_t next = zone.find(':', pos + 1);
      if (next == std::string::npos) next = zone.size();
      prefix = zone.substr(0, next);
      dir /= prefix;
      pos = next;
    }
    return dir;
  }

 private:
  static std::string control_type(const std::string& zone) { return zone.substr(0, zone.find(':')); }
  [[nodiscard]] fs::path class_dir() const { return dir_.path() / "class" / "powercap"; }
  [[nodiscard]] fs::path devices_dir() const { return dir_.path() / "devices" / "virtual" / "powercap"; }

  TempDir dir_;
};

// Runs `check` in a forked child with the uid/gid of "nobody" (65534) and
// returns its exit status, or nullopt when the process cannot drop
// privileges (not root, or no CAP_SETUID). Use it to test permission errors
// when the suite runs as root, where mode 000 files are still readable.
// The child must not touch doctest: it reports through its exit code only.
inline std::optional<int> run_as_nobody(const std::function<int()>& check) {
  if (::geteuid() != 0) return std::nullopt;
  // Unflushed test output would otherwise be written twice (the child's
  // sanitizer runtime may flush stdio at _exit).
  std::fflush(nullptr);
  const pid_t pid = ::fork();
  if (pid < 0) return std::nullopt;
  if (pid == 0) {
    if (::setgroups(0, nullptr) != 0 || ::setgid(65534) != 0 || ::setuid(65534) != 0) ::_exit(125);
    int rc = 125;
    try {
      rc = check();
    } catch (...) {
      rc = 124;
    }
    ::_exit(rc);
  }
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) return std::nullopt;
  }
  if (!WIFEXITED(status)) return 126;
  if (WEXITSTATUS(status) == 125) return std::nullopt;  // could not drop privileges
  return WEXITSTATUS(status);
}

}  // namespace greenml_test
