/*
 * Fake RAPL hardware for tests: rewrites the energy_uj files of a fake powercap
 * tree in place, on an absolute-deadline loop, from a scripted power profile
 * whose integral is known in closed form (tests/fakes/truth.py mirrors it).
 *
 * Usage:
 *   powercap_writer ROOT T0_NS UPDATE_US ZONE BASE_W AMP_W FREQ_HZ [ZONE BASE_W AMP_W FREQ_HZ ...]
 *
 *   ROOT       the powercap root (e.g. <tmp>/powercap)
 *   T0_NS      CLOCK_MONOTONIC instant (ns) at which every profile starts (energy 0)
 *   UPDATE_US  update period in microseconds (real RAPL: about 1000)
 *   ZONE       zone directory relative to ROOT, e.g. intel-rapl:0 or intel-rapl:0/intel-rapl:0:0
 *   profile    P(tau) = BASE_W + AMP_W * sin(2 pi FREQ_HZ tau), tau = (t - T0_NS) / 1e9 s
 *              E(tau) = BASE_W tau + AMP_W / (2 pi FREQ_HZ) (1 - cos(2 pi FREQ_HZ tau))
 *              (BASE_W tau when FREQ_HZ == 0); keep BASE_W >= |AMP_W|.
 *
 * POWERCAP_WRITER_BURST="BURST_W,PERIOD_MS,WIDTH_MS" (optional, every zone) adds BURST_W for
 * the first WIDTH_MS of every PERIOD_MS (from T0_NS): adversarial power that changes faster
 * than a counter updates. E gains BURST_W (floor(tau / P) W + min(tau mod P, W)).
 *
 * At every update instant t (deadlines T0_NS + k * UPDATE_US, slept to with
 * clock_nanosleep(TIMER_ABSTIME)) each zone's energy_uj becomes
 *
 *   floor(1e6 * E((t - T0_NS) / 1e9)) mod (max_energy_range_uj + 1)   (no modulo when the range is 0)
 *
 * where t is the CLOCK_MONOTONIC time read just before the write: like the
 * hardware, a value is the energy up to the instant it appears, even when the
 * writer woke late (lateness is reported at exit).
 *
 * Writing in place: the reader keeps energy_uj open and preads offset 0, so
 * the file is never replaced. Each value is one pwrite of "<digits>\n" at
 * offset 0; when it is shorter than the previous content (only at a wrap,
 * since values grow between wraps) the write is padded with newlines to the
 * old length and the file is then truncated, so a concurrent reader sees the
 * old value, the new value followed by blank lines (parsed as the new value),
 * or the final text, never an empty file or trailing digits.
 *
 * Real counters never stall, but a process can be descheduled for milliseconds
 * on a busy machine, which would make values staler than the ~1 ms update
 * period the reader may assume. So the writer asks for SCHED_FIFO (lowest
 * real-time priority; it needs a few microseconds per update) and carries on
 * at normal priority when that is not permitted.
 *
 * After the first write of every zone it prints "ready" on stdout. It runs
 * until SIGTERM or SIGINT (and dies with its parent), then prints
 * "updates=<n> max_late_ns=<ns> realtime=<0|1>" on stdout and exits 0.
 *
 * Build: cc -O2 -Wall -Wextra powercap_writer.c -o powercap_writer -lm
 */
#define _GNU_SOURCE

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif

struct zone {
  const char* name;
  int fd;
  double base_w, amp_w, freq_hz;
  uint64_t range_uj; /* 0: never wraps */
  size_t len;        /* current length of the file's content */
};

static volatile sig_atomic_t g_stop = 0;

static void on_signal(int sig) {
  (void)sig;
  g_stop = 1;
}

static int64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static double g_burst_w = 0.0, g_burst_period_s = 0.0, g_burst_width_s = 0.0;

static double burst_energy_j(double tau) {
  if (g_burst_w <= 0.0 || g_burst_period_s <= 0.0 || tau <= 0.0) return 0.0;
  const double k = floor(tau / g_burst_period_s);
  const double r = tau - k * g_burst_period_s;
  return g_burst_w * (k * g_burst_width_s + (r < g_burst_width_s ? r : g_burst_width_s));
}

static double energy_j(const struct zone* z, double tau) {
  const double two_pi = 6.283185307179586;
  const double burst = burst_energy_j(tau);
  if (z->freq_hz == 0.0) return z->base_w * tau + burst;
  return z->base_w * tau + burst +
         z->amp_w / (two_pi * z->freq_hz) * (1.0 - cos(two_pi * z->freq_hz * tau));
}

static void die(const char* what, const char* detail) {
  fprintf(stderr, "powercap_writer: %s%s%s\n", what, detail ? ": " : "", detail ? detail : "");
  exit(2);
}

static int parse_double(const char* s, double* out) {
  char* end;
  errno = 0;
  *out = strtod(s, &end);
  return errno == 0 && end != s && *end == '\0';
}

static int parse_i64(const char* s, long long* out) {
  char* end;
  errno = 0;
  *out = strtoll(s, &end, 10);
  return errno == 0 && end != s && *end == '\0';
}

static uint64_t read_range(const char* root, const char* zone) {
  char path[4096];
  char buf[64];
  FILE* f;
  size_t n;
  snprintf(path, sizeof path, "%s/%s/max_energy_range_uj", root, zone);
  f = fopen(path, "r");
  if (f == NULL) return 0;
  n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = '\0';
  return strtoull(buf, NULL, 10);
}

static void write_value(struct zone* z, uint64_t value) {
  char buf[64];
  int n = snprintf(buf, sizeof buf, "%llu\n", (unsigned long long)value);
  size_t len = (size_t)n;
  size_t out = len;
  if (len < z->len) {
    memset(buf + len, '\n', z->len - len);
    out = z->len;
  }
  if (pwrite(z->fd, buf, out, 0) != (ssize_t)out) die("pwrite failed on", z->name);
  if (out > len && ftruncate(z->fd, (off_t)len) != 0) die("ftruncate failed on", z->name);
  z->len = len;
}

static void update_all(struct zone* zones, int nz, int64_t t0_ns) {
  for (int i = 0; i < nz; ++i) {
    struct zone* z = &zones[i];
    const double tau = (double)(now_ns() - t0_ns) / 1e9;
    double e = floor(1e6 * energy_j(z, tau));
    uint64_t v = e <= 0 ? 0 : (uint64_t)e;
    if (z->range_uj > 0) v %= z->range_uj + 1; /* the counter shows 0..max_energy_range_uj inclusive */
    write_value(z, v);
  }
}

int main(int argc, char** argv) {
  if (argc < 8 || (argc - 4) % 4 != 0) {
    fprintf(stderr,
            "usage: %s ROOT T0_NS UPDATE_US ZONE BASE_W AMP_W FREQ_HZ [ZONE BASE_W AMP_W FREQ_HZ ...]\n",
            argv[0]);
    return 2;
  }
#ifdef __linux__
  prctl(PR_SET_PDEATHSIG, SIGTERM);
#endif
  const char* root = argv[1];
  const char* burst = getenv("POWERCAP_WRITER_BURST");
  if (burst != NULL && *burst != '\0') {
    double w = 0, p_ms = 0, width_ms = 0;
    if (sscanf(burst, "%lf,%lf,%lf", &w, &p_ms, &width_ms) != 3 || w < 0 || p_ms <= 0 ||
        width_ms < 0 || width_ms > p_ms)
      die("bad POWERCAP_WRITER_BURST (want BURST_W,PERIOD_MS,WIDTH_MS)", burst);
    g_burst_w = w;
    g_burst_period_s = p_ms / 1e3;
    g_burst_width_s = width_ms / 1e3;
  }
  long long t0_ns, update_us;
  if (!parse_i64(argv[2], &t0_ns)) die("bad T0_NS", argv[2]);
  if (!parse_i64(argv[3], &update_us) || update_us <= 0) die("bad UPDATE_US", argv[3]);
  const int nz = (argc - 4) / 4;
  struct zone* zones = calloc((size_t)nz, sizeof *zones);
  if (zones == NULL) die("out of memory", NULL);
  for (int i = 0; i < nz; ++i) {
    struct zone* z = &zones[i];
    char path[4096];
    struct stat st;
    z->name = argv[4 + 4 * i];
    if (!parse_double(argv[5 + 4 * i], &z->base_w) || !parse_double(argv[6 + 4 * i], &z->amp_w) ||
        !parse_double(argv[7 + 4 * i], &z->freq_hz))
      die("bad profile for zone", z->name);
    if (z->base_w < fabs(z->amp_w)) die("BASE_W must be >= |AMP_W| for zone", z->name);
    z->range_uj = read_range(root, z->name);
    snprintf(path, sizeof path, "%s/%s/energy_uj", root, z->name);
    z->fd = open(path, O_RDWR | O_CLOEXEC);
    if (z->fd < 0) die("cannot open", path);
    if (fstat(z->fd, &st) != 0) die("cannot stat", path);
    z->len = (size_t)st.st_size;
  }

  struct sched_param sp;
  memset(&sp, 0, sizeof sp);
  sp.sched_priority = sched_get_priority_min(SCHED_FIFO);
  const int realtime = sched_setscheduler(0, SCHED_FIFO, &sp) == 0;

  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);

  update_all(zones, nz, t0_ns);
  printf("ready\n");
  fflush(stdout);

  const int64_t period = (int64_t)update_us * 1000;
  int64_t now = now_ns();
  /* The first deadline on the grid T0_NS + k * period after now. */
  int64_t k = now > t0_ns ? (now - t0_ns) / period + 1 : 0;
  int64_t deadline = t0_ns + k * period;
  unsigned long long updates = 0;
  int64_t max_late = 0;
  while (!g_stop) {
    struct timespec ts = {(time_t)(deadline / 1000000000LL), (long)(deadline % 1000000000LL)};
    int rc = clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
    if (rc == EINTR) continue;
    if (g_stop) break;
    now = now_ns();
    if (now - deadline > max_late) max_late = now - deadline;
    update_all(zones, nz, t0_ns);
    ++updates;
    deadline += period;
    now = now_ns();
    if (now > deadline) deadline += ((now - deadline) / period + 1) * period; /* skip missed ticks */
  }
  printf("updates=%llu max_late_ns=%lld realtime=%d\n", updates, (long long)max_late, realtime);
  fflush(stdout);
  for (int i = 0; i < nz; ++i) close(zones[i].fd);
  free(zones);
  return 0;
}
