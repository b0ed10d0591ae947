/*
 * A fake libnvidia-ml.so.1 for tests: the handful of NVML entry points greenml
 * resolves with dlsym, scripted from files so a test can change the "hardware"
 * while the code under test is running.
 *
 * Every call re-reads getenv("FAKE_NVML_DIR") and the files below; nothing is
 * cached, so a test may rewrite a file (or switch the variable) mid-run.
 *
 *   $FAKE_NVML_DIR/init_error        optional int: nvmlInit_v2 returns it
 *   $FAKE_NVML_DIR/count             number of devices (missing = 0)
 *   $FAKE_NVML_DIR/<i>/uuid          default "GPU-%08x-0000-4000-8000-%012x" (i, 0xfeed0000+i)
 *   $FAKE_NVML_DIR/<i>/name          default "Fake NVIDIA GPU"
 *   $FAKE_NVML_DIR/<i>/energy_mj     static energy counter (mJ); missing = NOT_SUPPORTED
 *   $FAKE_NVML_DIR/<i>/power_mw      static power (mW); missing = NOT_SUPPORTED
 *   $FAKE_NVML_DIR/<i>/profile       time-driven model, see below (wins over the static files)
 *   $FAKE_NVML_DIR/<i>/pci_bus_id    "domain:bus:device.function" in hex, e.g. 0000:3b:00.0;
 *                                    default 0000:<16+i>:00.0, so PCI order is NVML order
 *   $FAKE_NVML_DIR/<i>/power_limit_mw      power limit (mW): both the management limit
 *                                          (nvmlDeviceGetPowerManagementLimit) and the enforced
 *                                          one (nvmlDeviceGetEnforcedPowerLimit); missing =
 *                                          NOT_SUPPORTED. nvmlDeviceSetPowerManagementLimit
 *                                          rewrites it (see "Power limits" below).
 *   $FAKE_NVML_DIR/<i>/power_max_limit_mw  largest settable limit (mW); missing = NOT_SUPPORTED
 *                                          for the constraints, and for setting a limit
 *   $FAKE_NVML_DIR/<i>/power_min_limit_mw  smallest settable limit (mW); missing = 0
 *   $FAKE_NVML_DIR/<i>/power_default_limit_mw  nvmlDeviceGetPowerManagementDefaultLimit (mW);
 *                                          missing = NOT_SUPPORTED
 *   $FAKE_NVML_DIR/<i>/limit_history       "t_ns limit_mw" lines appended by every set (below)
 *   $FAKE_NVML_DIR/<i>/mig_uuids           MIG instance UUIDs ("MIG-..."), one a line: instances
 *                                          of this GPU, found by nvmlDeviceGetHandleByUUID;
 *                                          nvmlDeviceGetDeviceHandleFromMigDeviceHandle gives
 *                                          this GPU back
 *   $FAKE_NVML_DIR/<i>/cuda_cc       CUDA compute capability "major.minor"; missing = NOT_SUPPORTED
 *   $FAKE_NVML_DIR/<i>/{energy,power,handle,uuid,name,set_limit}_error
 *                                    optional nvmlReturn_t injected into that call
 *                                    (e.g. 3 NOT_SUPPORTED, 4 NO_PERMISSION, 15 GPU_IS_LOST);
 *                                    0 or a missing file means no error. set_limit_error = 4
 *                                    is a process without root: the set fails, nothing changes.
 *   $FAKE_NVML_DIR/calls.log         when this file exists, every NVML call appends a line
 *                                    "<pid> <call>" to it (call: init, shutdown, count, handle,
 *                                    handle_by_uuid, uuid, name, pci, energy, power, limit,
 *                                    cc, set_limit, mig_parent), one write(2) per line so processes never interleave.
 *
 * A counter reset is a smaller energy_mj (or a profile restarted with t0 = now);
 * a GPU lost mid-run is energy_error/power_error = 15; a counter that stops
 * being supported after working is energy_error = 3.
 *
 * Profile: one line "base_w amp_w freq_hz update_ms t0_ns". With t the
 * CLOCK_MONOTONIC time in ns and tau = (t - t0_ns) / 1e9 seconds,
 *
 *   P(tau) = base_w + amp_w * sin(2*pi*freq_hz*tau)                      [W]
 *   E(tau) = base_w*tau + amp_w/(2*pi*freq_hz) * (1 - cos(2*pi*freq_hz*tau))  [J]
 *            (E(tau) = base_w*tau when freq_hz == 0), the integral of P from t0.
 *
 * nvmlDeviceGetTotalEnergyConsumption moves only every update_ms, like real
 * GPUs: with u = llround(update_ms * 1e6) ns and d = t - t0_ns (integer ns),
 *   q = (d / u) * u          (integer division; q = d when u <= 0; 0 when d < 0)
 *   energy_mj = floor(1000 * E(q / 1e9))   (clamped at 0)
 * nvmlDeviceGetPowerUsage reports the mean power over the last second, in mW:
 *   power_mw = llround(1000 * (E(tau) - E(tau - 1)))   (clamped at 0; E as above,
 *   extended to negative tau by the same formula)
 * Keep base_w >= |amp_w| so the counter never runs backwards.
 *
 * Power limits. nvmlDeviceSetPowerManagementLimit(dev, mw) returns NOT_SUPPORTED without
 * power_max_limit_mw, INVALID_ARGUMENT outside [power_min_limit_mw, power_max_limit_mw], the
 * injected set_limit_error if any (then nothing changes); otherwise it rewrites power_limit_mw
 * and appends "<CLOCK_MONOTONIC ns> <mw>" to limit_history (first "0 <old limit>" when the
 * history is empty, so the lines cover all time). A profile's power responds to the limit: with
 * peak = base_w + |amp_w| + burst_w and L(t) the limit in force at t (the last history line at
 * or before t; without a history, power_limit_mw; no file = no limit), the GPU draws
 *   P_capped(t) = P(t) * min(1, L(t) / peak)
 * which is exactly min(P, L) for a constant profile (amp 0, no bursts) and never exceeds L. The
 * energy counter and the power reading integrate P_capped piecewise over the history; with no
 * limit below the peak they are the uncapped formulas above, bit for bit.
 *
 * Compile-time switches build variants:
 *   -DFAKE_NVML_NO_ENERGY   no nvmlDeviceGetTotalEnergyConsumption (pre-Volta driver)
 *   -DFAKE_NVML_NO_V2       only the old names nvmlInit, nvmlDeviceGetCount,
 *                           nvmlDeviceGetHandleByIndex exist (no _v2)
 *
 * Initialisation is per process, stricter than NVML: a forked child inherits
 * the parent's memory but not its initialisation, so until the child calls
 * nvmlInit itself every device call there returns NVML_ERROR_UNINITIALIZED,
 * and an nvmlShutdown there (the parent's init) returns it too. A test sees a
 * child reusing its parent's state as failed reads, and calls.log tells which
 * process called what.
 *
 * Test hook: fake_nvml_init_count() returns nvmlInit minus nvmlShutdown calls
 * of the calling process, so a test can check that NVML was shut down.
 *
 * Build: cc -shared -fPIC -O2 -Wall -Wextra fake_nvml.c -o libnvidia-ml.so.1 -lm
 */
#define _POSIX_C_SOURCE 200809L

#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#define FAKE_EXPORT __attribute__((visibility("default")))

typedef int nvmlReturn_t;
typedef struct fake_nvml_device {
  unsigned int index;
} * nvmlDevice_t;

enum {
  NVML_SUCCESS = 0,
  NVML_ERROR_UNINITIALIZED = 1,
  NVML_ERROR_INVALID_ARGUMENT = 2,
  NVML_ERROR_NOT_SUPPORTED = 3,
  NVML_ERROR_NO_PERMISSION = 4,
  NVML_ERROR_NOT_FOUND = 6,
  NVML_ERROR_INSUFFICIENT_SIZE = 7,
  NVML_ERROR_DRIVER_NOT_LOADED = 9,
  NVML_ERROR_GPU_IS_LOST = 15,
  NVML_ERROR_UNKNOWN = 999
};

#define FAKE_MAX_DEVICES 64

static int mig_uuid(unsigned int index, unsigned int k, char* buf, size_t size);

#define FAKE_MAX_MIG_PER_GPU 8

static struct fake_nvml_device g_devices[FAKE_MAX_DEVICES];
/* MIG instance handles: g_mig[i][k] is instance k of GPU i (its index field holds i). */
static struct fake_nvml_device g_mig[FAKE_MAX_DEVICES][FAKE_MAX_MIG_PER_GPU];
static int g_init_count;  /* nvmlInit minus nvmlShutdown, like NVML's ref count */
static pid_t g_init_pid;  /* the process g_init_count belongs to */

/* This process's count: a forked child starts at 0 whatever it inherited. */
static int init_count(void) { return g_init_pid == getpid() ? g_init_count : 0; }

/* Reads $FAKE_NVML_DIR/<rel> into buf (NUL-terminated, trailing whitespace
 * stripped). Returns 0 when the variable is unset or the file is missing. */
static int read_file(const char* rel, char* buf, size_t size) {
  const char* dir = getenv("FAKE_NVML_DIR");
  char path[4096];
  FILE* f;
  size_t n;
  if (dir == NULL || size == 0) return 0;
  if (snprintf(path, sizeof path, "%s/%s", dir, rel) >= (int)sizeof path) return 0;
  f = fopen(path, "r");
  if (f == NULL) return 0;
  n = fread(buf, 1, size - 1, f);
  fclose(f);
  buf[n] = '\0';
  while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == ' ' || buf[n - 1] == '\r' ||
                   buf[n - 1] == '\t'))
    buf[--n] = '\0';
  return 1;
}

/* Appends "<pid> <call>" to $FAKE_NVML_DIR/calls.log when that file exists. */
static void log_call(const char* call) {
  const char* dir = getenv("FAKE_NVML_DIR");
  char path[4096];
  char line[128];
  int fd;
  int n;
  if (dir == NULL) return;
  if (snprintf(path, sizeof path, "%s/calls.log", dir) >= (int)sizeof path) return;
  fd = open(path, O_WRONLY | O_APPEND | O_CLOEXEC);
  if (fd < 0) return;
  n = snprintf(line, sizeof line, "%ld %s\n", (long)getpid(), call);
  if (n > 0 && write(fd, line, (size_t)n) < 0) { /* a lost log line fails the test that reads it */ }
  close(fd);
}

static int read_device_file(unsigned int index, const char* name, char* buf, size_t size) {
  char rel[256];
  snprintf(rel, sizeof rel, "%u/%s", index, name);
  return read_file(rel, buf, size);
}

/* 1 and *out set when the file holds an integer. */
static int read_ll(const char* rel, long long* out) {
  char buf[64];
  char* end;
  if (!read_file(rel, buf, sizeof buf)) return 0;
  *out = strtoll(buf, &end, 10);
  return end != buf;
}

static int read_device_ll(unsigned int index, const char* name, long long* out) {
  char rel[256];
  snprintf(rel, sizeof rel, "%u/%s", index, name);
  return read_ll(rel, out);
}

/* The injected error for one call kind, or NVML_SUCCESS. */
static nvmlReturn_t injected(unsigned int index, const char* what) {
  char name[64];
  long long code = 0;
  snprintf(name, sizeof name, "%s_error", what);
  if (read_device_ll(index, name, &code)) return (nvmlReturn_t)code;
  return NVML_SUCCESS;
}

static unsigned int device_count(void) {
  long long n = 0;
  if (!read_ll("count", &n) || n < 0) return 0;
  return n > FAKE_MAX_DEVICES ? FAKE_MAX_DEVICES : (unsigned int)n;
}

/* Checks the handle and the initialisation state shared by device calls. */
static nvmlReturn_t check_device(nvmlDevice_t device) {
  if (init_count() <= 0) return NVML_ERROR_UNINITIALIZED;
  if (device == NULL || device < &g_devices[0] || device >= &g_devices[FAKE_MAX_DEVICES])
    return NVML_ERROR_INVALID_ARGUMENT;
  return NVML_SUCCESS;
}

struct profile {
  double base_w, amp_w, freq_hz, update_ms;
  long long t0_ns;
  double burst_w, burst_period_ms, burst_width_ms; /* optional: 0 0 0 = none */
};

static int read_profile(unsigned int index, struct profile* p) {
  char buf[256];
  if (!read_device_file(index, "profile", buf, sizeof buf)) return 0;
  p->burst_w = p->burst_period_ms = p->burst_width_ms = 0.0;
  const int n = sscanf(buf, "%lf %lf %lf %lf %lld %lf %lf %lf", &p->base_w, &p->amp_w,
                       &p->freq_hz, &p->update_ms, &p->t0_ns, &p->burst_w, &p->burst_period_ms,
                       &p->burst_width_ms);
  return n == 5 || n == 8;
}

static long long monotonic_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* Energy (J) from t0 to t0 + tau seconds; see the header comment. */
static double profile_energy_j(const struct profile* p, double tau) {
  const double two_pi = 6.283185307179586;
  double burst = 0.0;
  /* Optional bursts: burst_w for the first burst_width_ms of every burst_period_ms. */
  if (p->burst_w > 0.0 && p->burst_period_ms > 0.0 && tau > 0.0) {
    const double period = p->burst_period_ms / 1e3, width = p->burst_width_ms / 1e3;
    const double k = floor(tau / period), r = tau - k * period;
    burst = p->burst_w * (k * width + (r < width ? r : width));
  }
  if (p->freq_hz == 0.0) return p->base_w * tau + burst;
  return p->base_w * tau + burst +
         p->amp_w / (two_pi * p->freq_hz) * (1.0 - cos(two_pi * p->freq_hz * tau));
}

/* ---- power limits and the capped profile --------------------------------- */

#define FAKE_MAX_LIMIT_SEGMENTS 1024 /* on the stack: the sampler thread reads too */

struct limit_segment {
  long long t_ns;   /* in force from here */
  double limit_mw;  /* < 0: no limit */
};

/* The limits in force over time, oldest first; returns how many. */
static int read_limit_history(unsigned int index, struct limit_segment* seg, int max) {
  const char* dir = getenv("FAKE_NVML_DIR");
  char path[4096];
  FILE* f;
  int n = 0;
  long long t, mw;
  if (dir != NULL && snprintf(path, sizeof path, "%s/%u/limit_history", dir, index) < (int)sizeof path &&
      (f = fopen(path, "r")) != NULL) {
    while (n < max && fscanf(f, "%lld %lld", &t, &mw) == 2) {
      seg[n].t_ns = t;
      seg[n].limit_mw = (double)mw;
      ++n;
    }
    fclose(f);
  }
  if (n == 0) {
    seg[0].t_ns = 0;
    seg[0].limit_mw = read_device_ll(index, "power_limit_mw", &mw) && mw > 0 ? (double)mw : -1.0;
    n = 1;
  }
  return n;
}

static double profile_peak_w(const struct profile* p) {
  return p->base_w + fabs(p->amp_w) + (p->burst_w > 0.0 ? p->burst_w : 0.0);
}

/* min(1, L / peak): the fraction of the profile's power a limit lets through. */
static double cap_scale(const struct profile* p, double limit_mw) {
  const double peak = profile_peak_w(p);
  if (limit_mw < 0.0 || peak <= 0.0 || limit_mw / 1000.0 >= peak) return 1.0;
  return limit_mw / 1000.0 / peak;
}

/* Energy (J) of the capped profile between CLOCK_MONOTONIC times a_ns <= b_ns. */
static double capped_energy_j(unsigned int index, const struct profile* p, long long a_ns,
                              long long b_ns) {
  struct limit_segment seg[FAKE_MAX_LIMIT_SEGMENTS];
  const int n = read_limit_history(index, seg, FAKE_MAX_LIMIT_SEGMENTS);
  double e = 0.0;
  int k;
  int capped = 0;
  for (k = 0; k < n; ++k) capped |= cap_scale(p, seg[k].limit_mw) < 1.0;
  if (!capped) { /* the uncapped formulas, bit for bit */
    const double tau = (double)(b_ns - p->t0_ns) / 1e9;
    return profile_energy_j(p, tau) - (b_ns - a_ns == 1000000000LL
                                           ? profile_energy_j(p, tau - 1.0)
                                           : profile_energy_j(p, (double)(a_ns - p->t0_ns) / 1e9));
  }
  for (k = 0; k < n; ++k) {
    /* The first segment also covers all time before it. */
    const long long lo = k == 0 ? a_ns : (seg[k].t_ns > a_ns ? seg[k].t_ns : a_ns);
    const long long hi = k + 1 < n ? (seg[k + 1].t_ns < b_ns ? seg[k + 1].t_ns : b_ns) : b_ns;
    if (hi <= lo) continue;
    e += cap_scale(p, seg[k].limit_mw) * (profile_energy_j(p, (double)(hi - p->t0_ns) / 1e9) -
                                          profile_energy_j(p, (double)(lo - p->t0_ns) / 1e9));
  }
  return e;
}

#ifndef FAKE_NVML_NO_ENERGY
static unsigned long long profile_energy_mj(unsigned int index, const struct profile* p,
                                            long long now_ns) {
  const long long u = llround(p->update_ms * 1e6);
  long long d = now_ns - p->t0_ns;
  double e;
  if (d < 0) return 0;
  if (u > 0) d = (d / u) * u;
  e = floor(1000.0 * capped_energy_j(index, p, p->t0_ns, p->t0_ns + d));
  return e < 0 ? 0ULL : (unsigned long long)e;
}
#endif

static unsigned int profile_power_mw(unsigned int index, const struct profile* p,
                                     long long now_ns) {
  const double mw = 1000.0 * capped_energy_j(index, p, now_ns - 1000000000LL, now_ns);
  return mw < 0 ? 0U : (unsigned int)llround(mw);
}

/* ---- exported NVML API ---------------------------------------------------- */

static nvmlReturn_t do_init(void) {
  long long code = 0;
  log_call("init");
  if (getenv("FAKE_NVML_DIR") == NULL) return NVML_ERROR_DRIVER_NOT_LOADED;
  if (read_ll("init_error", &code) && code != 0) return (nvmlReturn_t)code;
  g_init_count = init_count() + 1;
  g_init_pid = getpid();
  return NVML_SUCCESS;
}

static nvmlReturn_t do_get_count(unsigned int* count) {
  log_call("count");
  if (init_count() <= 0) return NVML_ERROR_UNINITIALIZED;
  if (count == NULL) return NVML_ERROR_INVALID_ARGUMENT;
  *count = device_count();
  return NVML_SUCCESS;
}

static nvmlReturn_t do_get_handle_quiet(unsigned int index, nvmlDevice_t* device) {
  nvmlReturn_t rc;
  if (init_count() <= 0) return NVML_ERROR_UNINITIALIZED;
  if (device == NULL || index >= device_count()) return NVML_ERROR_INVALID_ARGUMENT;
  rc = injected(index, "handle");
  if (rc != NVML_SUCCESS) return rc;
  g_devices[index].index = index;
  *device = &g_devices[index];
  return NVML_SUCCESS;
}

static nvmlReturn_t do_get_handle(unsigned int index, nvmlDevice_t* device) {
  log_call("handle");
  return do_get_handle_quiet(index, device);
}

#ifndef FAKE_NVML_NO_V2
FAKE_EXPORT nvmlReturn_t nvmlInit_v2(void) { return do_init(); }
FAKE_EXPORT nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int* count) { return do_get_count(count); }
FAKE_EXPORT nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t* device) {
  return do_get_handle(index, device);
}
#endif

/* The pre-_v2 names, present in real drivers too. */
FAKE_EXPORT nvmlReturn_t nvmlInit(void) { return do_init(); }
FAKE_EXPORT nvmlReturn_t nvmlDeviceGetCount(unsigned int* count) { return do_get_count(count); }
FAKE_EXPORT nvmlReturn_t nvmlDeviceGetHandleByIndex(unsigned int index, nvmlDevice_t* device) {
  return do_get_handle(index, device);
}

FAKE_EXPORT nvmlReturn_t nvmlShutdown(void) {
  log_call("shutdown");
  if (init_count() <= 0) return NVML_ERROR_UNINITIALIZED;
  --g_init_count;
  return NVML_SUCCESS;
}

static nvmlReturn_t copy_string(const char* value, char* out, unsigned int length) {
  const size_t n = strlen(value);
  if (out == NULL) return NVML_ERROR_INVALID_ARGUMENT;
  if (n + 1 > length) return NVML_ERROR_INSUFFICIENT_SIZE;
  memcpy(out, value, n + 1);
  return NVML_SUCCESS;
}

FAKE_EXPORT nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t device, char* uuid, unsigned int length) {
  char buf[256];
  nvmlReturn_t rc;
  log_call("uuid");
  rc = check_device(device);
  if (rc != NVML_SUCCESS) return rc;
  rc = injected(device->index, "uuid");
  if (rc != NVML_SUCCESS) return rc;
  if (!read_device_file(device->index, "uuid", buf, sizeof buf))
    snprintf(buf, sizeof buf, "GPU-%08x-0000-4000-8000-%012x", device->index,
             0xfeed0000U + device->index);
  return copy_string(buf, uuid, length);
}

FAKE_EXPORT nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t device, char* name, unsigned int length) {
  char buf[256];
  nvmlReturn_t rc;
  log_call("name");
  rc = check_device(device);
  if (rc != NVML_SUCCESS) return rc;
  rc = injected(device->index, "name");
  if (rc != NVML_SUCCESS) return rc;
  if (!read_device_file(device->index, "name", buf, sizeof buf))
    snprintf(buf, sizeof buf, "Fake NVIDIA GPU");
  return copy_string(buf, name, length);
}

#ifndef FAKE_NVML_NO_ENERGY
FAKE_EXPORT nvmlReturn_t nvmlDeviceGetTotalEnergyConsumption(nvmlDevice_t device,
                                                             unsigned long long* energy) {
  struct profile p;
  long long mj = 0;
  nvmlReturn_t rc;
  log_call("energy");
  rc = check_device(device);
  if (rc != NVML_SUCCESS) return rc;
  if (energy == NULL) return NVML_ERROR_INVALID_ARGUMENT;
  rc = injected(device->index, "energy");
  if (rc != NVML_SUCCESS) return rc;
  if (read_profile(device->index, &p)) {
    *energy = profile_energy_mj(device->index, &p, monotonic_ns());
    return NVML_SUCCESS;
  }
  if (!read_device_ll(device->index, "energy_mj", &mj)) return NVML_ERROR_NOT_SUPPORTED;
  *energy = (unsigned long long)mj;
  return NVML_SUCCESS;
}
#endif

FAKE_EXPORT nvmlReturn_t nvmlDeviceGetPowerUsage(nvmlDevice_t device, unsigned int* power) {
  struct profile p;
  long long mw = 0;
  nvmlReturn_t rc;
  log_call("power");
  rc = check_device(device);
  if (rc != NVML_SUCCESS) return rc;
  if (power == NULL) return NVML_ERROR_INVALID_ARGUMENT;
  rc = injected(device->index, "power");
  if (rc != NVML_SUCCESS) return rc;
  if (read_profile(device->index, &p)) {
    *power = profile_power_mw(device->index, &p, monotonic_ns());
    return NVML_SUCCESS;
  }
  if (!read_device_ll(device->index, "power_mw", &mw)) return NVML_ERROR_NOT_SUPPORTED;
  *power = (unsigned int)mw;
  return NVML_SUCCESS;
}

FAKE_EXPORT const char* nvmlErrorString(nvmlReturn_t result) {
  switch (result) {
    case NVML_SUCCESS: return "Success";
    case NVML_ERROR_UNINITIALIZED: return "Uninitialized";
    case NVML_ERROR_INVALID_ARGUMENT: return "Invalid Argument";
    case NVML_ERROR_NOT_SUPPORTED: return "Not Supported";
    case NVML_ERROR_NO_PERMISSION: return "Insufficient Permissions";
    case NVML_ERROR_NOT_FOUND: return "Not Found";
    case NVML_ERROR_INSUFFICIENT_SIZE: return "Insufficient Size";
    case NVML_ERROR_DRIVER_NOT_LOADED: return "Driver Not Loaded";
    case NVML_ERROR_GPU_IS_LOST: return "GPU is lost";
    default: return "Unknown Error";
  }
}

FAKE_EXPORT nvmlReturn_t nvmlDeviceGetHandleByUUID(const char* uuid, nvmlDevice_t* device) {
  char buf[256];
  unsigned int i;
  const unsigned int n = device_count();
  log_call("handle_by_uuid");
  if (init_count() <= 0) return NVML_ERROR_UNINITIALIZED;
  if (uuid == NULL || device == NULL) return NVML_ERROR_INVALID_ARGUMENT;
  for (i = 0; i < n; ++i) {
    if (!read_device_file(i, "uuid", buf, sizeof buf))
      snprintf(buf, sizeof buf, "GPU-%08x-0000-4000-8000-%012x", i, 0xfeed0000U + i);
    if (strcmp(buf, uuid) == 0) return do_get_handle_quiet(i, device);
  }
  for (i = 0; i < n; ++i) {
    unsigned int k;
    for (k = 0; k < FAKE_MAX_MIG_PER_GPU && mig_uuid(i, k, buf, sizeof buf); ++k) {
      if (strcmp(buf, uuid) == 0) {
        g_mig[i][k].index = i;
        *device = &g_mig[i][k];
        return NVML_SUCCESS;
      }
    }
  }
  return NVML_ERROR_NOT_FOUND;
}

/* nvml.h's nvmlPciInfo_t (the _v3 layout): legacy id at 0, domain at 16, bus
 * at 20, device at 24, pciDeviceId at 28, pciSubSystemId at 32, busId at 36. */
typedef struct {
  char busIdLegacy[16];
  unsigned int domain;
  unsigned int bus;
  unsigned int device;
  unsigned int pciDeviceId;
  unsigned int pciSubSystemId;
  char busId[32];
} nvmlPciInfo_t;

FAKE_EXPORT nvmlReturn_t nvmlDeviceGetPciInfo_v3(nvmlDevice_t device, nvmlPciInfo_t* pci) {
  char buf[64];
  unsigned int domain = 0, bus = 0, dev = 0, fn = 0;
  nvmlReturn_t rc;
  log_call("pci");
  rc = check_device(device);
  if (rc != NVML_SUCCESS) return rc;
  if (pci == NULL) return NVML_ERROR_INVALID_ARGUMENT;
  if (read_device_file(device->index, "pci_bus_id", buf, sizeof buf)) {
    if (sscanf(buf, "%x:%x:%x.%x", &domain, &bus, &dev, &fn) != 4) return NVML_ERROR_UNKNOWN;
  } else {
    bus = 16 + device->index;
  }
  memset(pci, 0, sizeof *pci);
  pci->domain = domain;
  pci->bus = bus;
  pci->device = dev;
  pci->pciDeviceId = 0x10de; /* NVIDIA's vendor id in the low 16 bits */
  snprintf(pci->busIdLegacy, sizeof pci->busIdLegacy, "%04x:%02x:%02x.%x", domain & 0xffffU, bus,
           dev, fn);
  snprintf(pci->busId, sizeof pci->busId, "%08x:%02x:%02x.%x", domain, bus, dev, fn);
  return NVML_SUCCESS;
}

static nvmlReturn_t read_uint(nvmlDevice_t device, const char* file, const char* call,
                              unsigned int* out) {
  long long v = 0;
  nvmlReturn_t rc;
  log_call(call);
  rc = check_device(device);
  if (rc != NVML_SUCCESS) return rc;
  if (out == NULL) return NVML_ERROR_INVALID_ARGUMENT;
  if (!read_device_ll(device->index, file, &v) || v < 0) return NVML_ERROR_NOT_SUPPORTED;
  *out = (unsigned int)v;
  return NVML_SUCCESS;
}

FAKE_EXPORT nvmlReturn_t nvmlDeviceGetEnforcedPowerLimit(nvmlDevice_t device, unsigned int* limit) {
  return read_uint(device, "power_limit_mw", "limit", limit);
}

FAKE_EXPORT nvmlReturn_t nvmlDeviceGetPowerManagementLimit(nvmlDevice_t device, unsigned int* limit) {
  return read_uint(device, "power_limit_mw", "limit", limit);
}

FAKE_EXPORT nvmlReturn_t nvmlDeviceGetPowerManagementDefaultLimit(nvmlDevice_t device,
                                                                   unsigned int* limit) {
  return read_uint(device, "power_default_limit_mw", "limit", limit);
}

FAKE_EXPORT nvmlReturn_t nvmlDeviceGetPowerManagementLimitConstraints(nvmlDevice_t device,
                                                                       unsigned int* min_limit,
                                                                       unsigned int* max_limit) {
  long long lo = 0;
  nvmlReturn_t rc = read_uint(device, "power_max_limit_mw", "limit", max_limit);
  if (rc == NVML_SUCCESS && min_limit != NULL)
    *min_limit = read_device_ll(device->index, "power_min_limit_mw", &lo) && lo > 0
                     ? (unsigned int)lo : 0U;
  return rc;
}

/* Writes "<text>\n" to $FAKE_NVML_DIR/<i>/<name> through a temporary and a rename, or appends
 * it; returns 0 on success. */
static int write_device_file(unsigned int index, const char* name, const char* text, int append) {
  const char* dir = getenv("FAKE_NVML_DIR");
  char path[4096], tmp[4200], line[128];
  int fd, n;
  if (dir == NULL) return -1;
  if (snprintf(path, sizeof path, "%s/%u/%s", dir, index, name) >= (int)sizeof path) return -1;
  n = snprintf(line, sizeof line, "%s\n", text);
  if (append) {
    fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) return -1;
    if (write(fd, line, (size_t)n) != n) n = -1;
    close(fd);
    return n < 0 ? -1 : 0;
  }
  snprintf(tmp, sizeof tmp, "%s.%ld.tmp", path, (long)getpid());
  fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return -1;
  if (write(fd, line, (size_t)n) != n) n = -1;
  close(fd);
  if (n < 0 || rename(tmp, path) != 0) return -1;
  return 0;
}

FAKE_EXPORT nvmlReturn_t nvmlDeviceSetPowerManagementLimit(nvmlDevice_t device, unsigned int limit) {
  long long hi = 0, lo = 0, old = -1;
  char text[64], probe[8];
  nvmlReturn_t rc;
  log_call("set_limit");
  rc = check_device(device);
  if (rc != NVML_SUCCESS) return rc;
  rc = injected(device->index, "set_limit");
  if (rc != NVML_SUCCESS) return rc;
  if (!read_device_ll(device->index, "power_max_limit_mw", &hi)) return NVML_ERROR_NOT_SUPPORTED;
  if (!read_device_ll(device->index, "power_min_limit_mw", &lo)) lo = 0;
  if ((long long)limit < lo || (long long)limit > hi) return NVML_ERROR_INVALID_ARGUMENT;
  if (!read_device_file(device->index, "limit_history", probe, sizeof probe) || probe[0] == '\0') {
    if (!read_device_ll(device->index, "power_limit_mw", &old)) old = -1;
    snprintf(text, sizeof text, "0 %lld", old);
    if (write_device_file(device->index, "limit_history", text, 1) != 0) return NVML_ERROR_UNKNOWN;
  }
  snprintf(text, sizeof text, "%lld %u", monotonic_ns(), limit);
  if (write_device_file(device->index, "limit_history", text, 1) != 0) return NVML_ERROR_UNKNOWN;
  snprintf(text, sizeof text, "%u", limit);
  if (write_device_file(device->index, "power_limit_mw", text, 0) != 0) return NVML_ERROR_UNKNOWN;
  return NVML_SUCCESS;
}

/* ---- MIG ------------------------------------------------------------------- */

/* The k-th line of GPU i's mig_uuids, into buf; 0 when there is none. */
static int mig_uuid(unsigned int index, unsigned int k, char* buf, size_t size) {
  char all[2048];
  char* line;
  char* save = NULL;
  unsigned int j = 0;
  if (!read_device_file(index, "mig_uuids", all, sizeof all)) return 0;
  for (line = strtok_r(all, "\n", &save); line != NULL; line = strtok_r(NULL, "\n", &save), ++j) {
    if (j == k) {
      snprintf(buf, size, "%s", line);
      return 1;
    }
  }
  return 0;
}

FAKE_EXPORT nvmlReturn_t nvmlDeviceGetDeviceHandleFromMigDeviceHandle(nvmlDevice_t mig,
                                                                       nvmlDevice_t* device) {
  log_call("mig_parent");
  if (init_count() <= 0) return NVML_ERROR_UNINITIALIZED;
  if (device == NULL || mig == NULL || mig < &g_mig[0][0] ||
      mig >= &g_mig[0][0] + FAKE_MAX_DEVICES * FAKE_MAX_MIG_PER_GPU)
    return NVML_ERROR_INVALID_ARGUMENT;
  return do_get_handle_quiet(mig->index, device);
}

FAKE_EXPORT nvmlReturn_t nvmlDeviceGetCudaComputeCapability(nvmlDevice_t device, int* major,
                                                            int* minor) {
  char buf[64];
  nvmlReturn_t rc;
  log_call("cc");
  rc = check_device(device);
  if (rc != NVML_SUCCESS) return rc;
  if (major == NULL || minor == NULL) return NVML_ERROR_INVALID_ARGUMENT;
  if (!read_device_file(device->index, "cuda_cc", buf, sizeof buf)) return NVML_ERROR_NOT_SUPPORTED;
  if (sscanf(buf, "%d.%d", major, minor) != 2) return NVML_ERROR_UNKNOWN;
  return NVML_SUCCESS;
}

/* Test hook, not part of NVML: this process's nvmlInit minus nvmlShutdown. */
FAKE_EXPORT int fake_nvml_init_count(void) { return init_count(); }
