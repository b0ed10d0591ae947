// A libFuzzer-compatible driver for compilers without libFuzzer (gcc): replays every file of the
// given corpus directories through LLVMFuzzerTestOneInput, then feeds it mutated inputs (bit
// flips, byte edits, inserts, deletions, duplications, dictionary tokens, splices) until --runs
// inputs or --seconds have passed. No coverage feedback: a bounded smoke run under ASan+UBSan,
// not a replacement for a libFuzzer campaign. The input being run is written to
// fuzz-failure.bin when the process aborts (a sanitizer report or a broken invariant).
#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size);
extern "C" void __sanitizer_set_death_callback(void (*callback)(void)) __attribute__((weak));

namespace {

std::vector<std::uint8_t> g_current;

void save_current() {
  const int fd = ::open("fuzz-failure.bin", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd >= 0) {
    ssize_t n = ::write(fd, g_current.data(), g_current.size());
    (void)n;
    ::close(fd);
  }
}

void on_abort(int) {
  save_current();
  std::signal(SIGABRT, SIG_DFL);
  std::raise(SIGABRT);
}

void run(const std::vector<std::uint8_t>& input) {
  g_current = input;
  LLVMFuzzerTestOneInput(g_current.data(), g_current.size());
}

std::vector<std::vector<std::uint8_t>> load(const std::string& dir) {
  std::vector<std::vector<std::uint8_t>> out;
  std::vector<std::string> names;
  if (DIR* d = ::opendir(dir.c_str())) {
    while (const dirent* e = ::readdir(d)) {
      if (e->d_name[0] != '.') names.emplace_back(e->d_name);
    }
    ::closedir(d);
  }
  for (const auto& name : names) {
    std::ifstream f(dir + "/" + name, std::ios::binary);
    out.emplace_back(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
  }
  return out;
}

const char* const kTokens[] = {
    "\n", " ", "\t", "\r\n", "0", "1", "-1", "+1", "18446744073709551615",
    "18446744073709551616", "99999999999999999999", "intel-rapl:", "intel-rapl:0",
    "intel-rapl:0:0", "intel-rapl-mmio:0", "/", "\x01", "name",
    "energy_uj", "max_energy_range_uj", "constraint_0_max_power_uw", "package-", "package-0",
    "package-1", "dram", "core", "uncore", "psys", "..",
};

std::vector<std::uint8_t> mutate(std::vector<std::uint8_t> in,
                                 const std::vector<std::vector<std::uint8_t>>& pool,
                                 std::mt19937_64& rng) {
  auto pick = [&](std::size_t n) { return n ? static_cast<std::size_t>(rng() % n) : 0; };
  const int edits = 1 + static_cast<int>(rng() % 4);
  for (int k = 0; k < edits; ++k) {
    switch (rng() % 8) {
      case 0:
        if (!in.empty()) in[pick(in.size())] ^= static_cast<std::uint8_t>(1u << (rng() % 8));
        break;
      case 1:
        if (!in.empty()) in[pick(in.size())] = static_cast<std::uint8_t>(rng());
        break;
      case 2:
        in.insert(in.begin() + static_cast<long>(pick(in.size() + 1)),
                  static_cast<std::uint8_t>(rng()));
        break;
      case 3:
        if (in.size() > 1) {
          const std::size_t a = pick(in.size()), n = 1 + pick(std::min<std::size_t>(16, in.size() - a));
          in.erase(in.begin() + static_cast<long>(a), in.begin() + static_cast<long>(a + n));
        }
        break;
      case 4:
        if (!in.empty() && in.size() < 4096) {
          const std::size_t a = pick(in.size()), n = 1 + pick(std::min<std::size_t>(32, in.size() - a));
          std::vector<std::uint8_t> piece(in.begin() + static_cast<long>(a),
                                          in.begin() + static_cast<long>(a + n));
          in.insert(in.begin() + static_cast<long>(pick(in.size() + 1)), piece.begin(), piece.end());
        }
        break;
      case 5:
      case 6: {
        const std::string tok = (rng() % 16 == 0) ? std::string("\0", 1)
                                                   : kTokens[pick(std::size(kTokens))];
        in.insert(in.begin() + static_cast<long>(pick(in.size() + 1)), tok.begin(), tok.end());
        break;
      }
      default:
        if (!pool.empty()) {
          const auto& other = pool[pick(pool.size())];
          if (!other.empty()) {
            const std::size_t a = pick(other.size());
            in.insert(in.begin() + static_cast<long>(pick(in.size() + 1)),
                      other.begin() + static_cast<long>(a), other.end());
          }
        }
    }
  }
  if (in.size() > 8192) in.resize(8192);
  return in;
}

}  // namespace

int main(int argc, char** argv) {
  double seconds = 10.0;
  long runs = -1;
  std::uint64_t seed = 1;
  std::vector<std::string> dirs;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--seconds" && i + 1 < argc) {
      seconds = std::atof(argv[++i]);
    } else if (a == "--runs" && i + 1 < argc) {
      runs = std::atol(argv[++i]);
    } else if (a == "--seed" && i + 1 < argc) {
      seed = std::strtoull(argv[++i], nullptr, 10);
    } else {
      dirs.push_back(a);
    }
  }
  std::signal(SIGABRT, on_abort);
  if (__sanitizer_set_death_callback != nullptr) __sanitizer_set_death_callback(save_current);

  std::vector<std::vector<std::uint8_t>> pool;
  for (const auto& d : dirs) {
    for (auto& input : load(d)) pool.push_back(std::move(input));
  }
  for (const auto& input : pool) run(input);
  const std::size_t replayed = pool.size();

  std::mt19937_64 rng(seed);
  const auto start = std::chrono::steady_clock::now();
  long done = 0;
  while (runs < 0 || done < runs) {
    const double elapsed =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (elapsed >= seconds) break;
    std::vector<std::uint8_t> base =
        pool.empty() ? std::vector<std::uint8_t>{static_cast<std::uint8_t>(rng())}
                     : pool[static_cast<std::size_t>(rng() % pool.size())];
    run(mutate(std::move(base), pool, rng));
    ++done;
  }
  const double elapsed =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("fuzz_sysfs: %zu corpus inputs replayed, %ld mutated inputs in %.1f s (seed %llu), "
              "0 failures\n",
              replayed, done, elapsed, static_cast<unsigned long long>(seed));
  return 0;
}
