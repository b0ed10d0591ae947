// Fuzz target for the sysfs parsers: parse_u64/trim_view, and RaplSource's reading of a powercap
// tree (zone directory names, `name` files, counters, ranges, power limits).
//
// libFuzzer entry point: build with clang++ -fsanitize=fuzzer,address,undefined. Without clang,
// tests/fuzz/fuzz_driver.cpp replays the corpus and a bounded number of mutated inputs through
// the same function (tests/fuzz/run_fuzz.sh).
//
// Input: the first byte picks the target (even: parse_u64 on the rest; odd: a powercap tree).
// A tree is records separated by '\0', each "relative/path/file" '\x01' "content": directories
// are created as needed; path components are cut to [A-Za-z0-9:_.-] and "." / ".." dropped.
#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "greenml/rapl_source.hpp"
#include "greenml/sysfs.hpp"

namespace {

[[noreturn]] void fail(const char* what, std::string_view input) {
  std::fprintf(stderr, "fuzz_sysfs: invariant broken: %s (input %zu bytes)\n", what, input.size());
  std::abort();
}

bool is_space(char c) { return c == ' ' || c == '\n' || c == '\t' || c == '\r'; }

// parse_u64 agrees with a reference parser built on 128-bit arithmetic.
void check_parse_u64(std::string_view text) {
  const std::string_view t = greenml::trim_view(text);
  if (!t.empty() && (is_space(t.front()) || is_space(t.back()))) fail("trim_view left space", text);
  if (t.size() > text.size() || (t.data() < text.data() && !t.empty())) fail("trim_view range", text);
  bool ok = !t.empty();
  unsigned __int128 value = 0;
  for (char c : t) {
    if (c < '0' || c > '9') {
      ok = false;
      break;
    }
    value = value * 10 + static_cast<unsigned>(c - '0');
    if (value > UINT64_MAX) {
      ok = false;
      break;
    }
  }
  const auto got = greenml::parse_u64(text);
  if (got.has_value() != ok) fail("parse_u64 accepts/rejects unlike the reference", text);
  if (got && *got != static_cast<std::uint64_t>(value)) fail("parse_u64 value", text);
}

std::string clean_component(std::string_view c) {
  std::string out;
  for (char ch : c) {
    const bool keep = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
                      (ch >= '0' && ch <= '9') || ch == ':' || ch == '_' || ch == '-' || ch == '.';
    if (keep && out.size() < 48) out += ch;
  }
  if (out == "." || out == "..") out.clear();
  return out;
}

void remove_tree(const std::string& path) {
  if (DIR* d = ::opendir(path.c_str())) {
    while (const dirent* e = ::readdir(d)) {
      const std::string name = e->d_name;
      if (name == "." || name == "..") continue;
      const std::string child = path + "/" + name;
      struct stat st{};
      if (::lstat(child.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) {
        remove_tree(child);
      } else {
        ::unlink(child.c_str());
      }
    }
    ::closedir(d);
  }
  ::rmdir(path.c_str());
}

bool known_domain(const std::string& d) {
  auto numbered = [&](const char* prefix) {
    const std::size_t n = std::strlen(prefix);
    return d.size() > n && d.compare(0, n, prefix) == 0 &&
           d.find_first_not_of("0123456789", n) == std::string::npos;
  };
  return numbered("package:") || numbered("dram:") || numbered("core:") ||
         numbered("uncore:") || d == "psys" || numbered("psys:");
}

void check_rapl_tree(std::string_view input) {
  char tmpl[] = "/tmp/greenml-fuzz-XXXXXX";
  if (::mkdtemp(tmpl) == nullptr) return;
  const std::string root = tmpl;
  std::size_t files = 0;
  std::size_t pos = 0;
  while (pos <= input.size() && files < 64) {
    std::size_t end = input.find('\0', pos);
    if (end == std::string_view::npos) end = input.size();
    const std::string_view rec = input.substr(pos, end - pos);
    pos = end + 1;
    const std::size_t sep = rec.find('\x01');
    if (sep == std::string_view::npos) continue;
    std::vector<std::string> parts;
    std::string_view path = rec.substr(0, sep);
    while (!path.empty() && parts.size() < 4) {
      const std::size_t slash = path.find('/');
      const std::string part = clean_component(path.substr(0, slash));
      if (!part.empty()) parts.push_back(part);
      path = slash == std::string_view::npos ? std::string_view() : path.substr(slash + 1);
    }
    if (parts.empty()) continue;
    std::string dir = root;
    bool ok = true;
    for (std::size_t i = 0; i + 1 < parts.size() && ok; ++i) {
      dir += "/" + parts[i];
      ok = ::mkdir(dir.c_str(), 0755) == 0 || errno == EEXIST;
    }
    if (!ok) continue;
    const std::string file = dir + "/" + parts.back();
    if (FILE* f = std::fopen(file.c_str(), "wb")) {
      const std::string_view content = rec.substr(sep + 1, 256);
      std::fwrite(content.data(), 1, content.size(), f);
      std::fclose(f);
      ++files;
    }
  }

  greenml::RaplSource source(root);
  const auto& channels = source.channels();
  const auto status = source.status();
  std::size_t available = 0;
  for (const auto& s : status) {
    if (s.available) ++available;
    if (!s.available && s.reason.empty()) fail("an unavailable domain without a reason", input);
  }
  if (available != channels.size()) fail("available domains != channels", input);
  for (const auto& ch : channels) {
    if (!known_domain(ch.domain)) fail("a channel with an unknown domain key", input);
    if (ch.to_si != 1e-6 || ch.kind != greenml::ChannelKind::counter) fail("channel units", input);
  }
  std::vector<std::uint64_t> raw(channels.size() + 1, 0);
  std::unique_ptr<bool[]> ok(new bool[channels.size() + 1]());
  source.read(raw.data(), ok.get());
  remove_tree(root);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const std::string_view rest(reinterpret_cast<const char*>(data) + 1, size - 1);
  if (data[0] % 2 == 0) {
    check_parse_u64(rest);
  } else {
    check_rapl_tree(rest);
  }
  return 0;
}
