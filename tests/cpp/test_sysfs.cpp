// parse_u64, read_text_file and OpenCounterFile against real temporary files.
#include <doctest.h>

#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <string>
#include <utility>

#include "greenml/sysfs.hpp"
#include "powercap_tree.hpp"

using greenml::OpenCounterFile;
using greenml::parse_u64;
using greenml_test::TempDir;
using greenml_test::write_file;

TEST_CASE("parse_u64 accepts decimals as sysfs prints them") {
  CHECK(parse_u64("123\n") == std::optional<std::uint64_t>(123));
  CHECK(parse_u64("123") == std::optional<std::uint64_t>(123));  // no newline
  CHECK(parse_u64("  42  ") == std::optional<std::uint64_t>(42));
  CHECK(parse_u64("\t7\r\n") == std::optional<std::uint64_t>(7));
  CHECK(parse_u64("0\n") == std::optional<std::uint64_t>(0));
  CHECK(parse_u64("007") == std::optional<std::uint64_t>(7));
  CHECK(parse_u64("18446744073709551615") == std::optional<std::uint64_t>(UINT64_MAX));
  CHECK(parse_u64("18446744073709551615\n") == std::optional<std::uint64_t>(UINT64_MAX));
  CHECK(parse_u64("262143328850\n") == std::optional<std::uint64_t>(262143328850ULL));
}

TEST_CASE("parse_u64 rejects empty text, signs, garbage and overflow") {
  CHECK_FALSE(parse_u64("").has_value());
  CHECK_FALSE(parse_u64("\n").has_value());
  CHECK_FALSE(parse_u64("   ").has_value());
  CHECK_FALSE(parse_u64("abc").has_value());
  CHECK_FALSE(parse_u64("12a").has_value());
  CHECK_FALSE(parse_u64("1 2").has_value());
  CHECK_FALSE(parse_u64("-1").has_value());
  CHECK_FALSE(parse_u64("+1").has_value());
  CHECK_FALSE(parse_u64("0x10").has_value());
  CHECK_FALSE(parse_u64("1.5").has_value());
  CHECK_FALSE(parse_u64("18446744073709551616").has_value());   // UINT64_MAX + 1
  CHECK_FALSE(parse_u64("18446744073709551620").has_value());   // overflow in the last digit
  CHECK_FALSE(parse_u64("99999999999999999999").has_value());   // 20 nines
  CHECK_FALSE(parse_u64("184467440737095516150").has_value());  // 21 digits
  CHECK_FALSE(parse_u64(std::string_view("12\0", 3)).has_value());
}

TEST_CASE("read_text_file reads a whole file and reports a missing one") {
  TempDir dir;
  const std::string path = (dir.path() / "name").string();
  write_file(path, "package-0\n");
  CHECK(greenml::read_text_file(path) == std::optional<std::string>("package-0\n"));

  errno = 0;
  CHECK_FALSE(greenml::read_text_file((dir.path() / "absent").string()).has_value());
  CHECK(errno == ENOENT);
}

TEST_CASE("OpenCounterFile reads the value and re-reads it after a rewrite") {
  TempDir dir;
  const std::string path = (dir.path() / "energy_uj").string();
  write_file(path, "123456\n");

  OpenCounterFile f(path);
  REQUIRE(f.is_open());
  CHECK(f.open_errno() == 0);
  CHECK(f.read_u64() == std::optional<std::uint64_t>(123456));
  CHECK(f.read_u64() == std::optional<std::uint64_t>(123456));  // again from offset 0

  // Rewritten in place (as the kernel does): the open fd sees the new value,
  // including when the new text is shorter than the old one.
  write_file(path, "99\n");
  CHECK(f.read_u64() == std::optional<std::uint64_t>(99));
  write_file(path, "18446744073709551615\n");
  CHECK(f.read_u64() == std::optional<std::uint64_t>(UINT64_MAX));
  write_file(path, "7");
  CHECK(f.read_u64() == std::optional<std::uint64_t>(7));
}

TEST_CASE("OpenCounterFile: unparsable, empty and oversized content read as nullopt") {
  TempDir dir;
  const std::string path = (dir.path() / "energy_uj").string();
  write_file(path, "garbage\n");
  OpenCounterFile f(path);
  REQUIRE(f.is_open());
  CHECK_FALSE(f.read_u64().has_value());

  write_file(path, "");
  CHECK_FALSE(f.read_u64().has_value());

  // 40 characters: longer than any counter; must not be parsed from a prefix.
  write_file(path, std::string(39, '1') + "\n");
  CHECK_FALSE(f.read_u64().has_value());
  write_file(path, "1234567890" + std::string(30, ' '));
  CHECK_FALSE(f.read_u64().has_value());

  // And it recovers once the content is sane again.
  write_file(path, "5\n");
  CHECK(f.read_u64() == std::optional<std::uint64_t>(5));
}

TEST_CASE("OpenCounterFile: a missing file is not open and keeps ENOENT") {
  TempDir dir;
  OpenCounterFile f((dir.path() / "no-such-file").string());
  CHECK_FALSE(f.is_open());
  CHECK(f.open_errno() == ENOENT);
  CHECK_FALSE(f.read_u64().has_value());

  const OpenCounterFile empty;
  CHECK_FALSE(empty.is_open());
  CHECK_FALSE(empty.read_u64().has_value());
}

TEST_CASE("OpenCounterFile: moves transfer the descriptor") {
  TempDir dir;
  const std::string a = (dir.path() / "a").string();
  const std::string b = (dir.path() / "b").string();
  write_file(a, "1\n");
  write_file(b, "2\n");

  OpenCounterFile fa(a);
  OpenCounterFile moved(std::move(fa));
  CHECK(moved.read_u64() == std::optional<std::uint64_t>(1));
  CHECK_FALSE(fa.is_open());  // NOLINT(bugprone-use-after-move): the moved-from state is the point

  OpenCounterFile fb(b);
  moved = std::move(fb);
  CHECK(moved.read_u64() == std::optional<std::uint64_t>(2));
  CHECK_FALSE(fb.is_open());  // NOLINT(bugprone-use-after-move)
}

TEST_CASE("OpenCounterFile: a file the user may not read is not open and keeps EACCES") {
  TempDir dir;
  const std::string path = (dir.path() / "energy_uj").string();
  write_file(path, "42\n");
  REQUIRE(::chmod(path.c_str(), 0) == 0);
  // The directory itself must be traversable by the unprivileged child.
  REQUIRE(::chmod(dir.str().c_str(), 0755) == 0);

  auto check = [&] {
    OpenCounterFile f(path);
    if (f.is_open()) return 1;
    if (f.open_errno() != EACCES) return 2;
    return 0;
  };

  if (::geteuid() != 0) {
    CHECK(check() == 0);
    return;
  }
  // Root reads mode-000 files, so run the check as "nobody" when possible.
  const auto rc = greenml_test::run_as_nobody(check);
  if (!rc) {
    MESSAGE("running as root without the right to drop privileges: permission-denied case skipped");
    return;
  }
  CHECK(*rc == 0);
}
