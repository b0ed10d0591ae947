/*
 * Extra NVML entry points for the peer comparison (benchmarks/peers/run.py).
 *
 * tests/fakes/fake_nvml.c implements only what greenml resolves. The peers load NVML through
 * pynvml (nvidia-ml-py), whose nvmlInit() calls nvmlInitWithFlags, and they query more of
 * the device (architecture, limits, memory, processes, ...). This file is compiled *together
 * with* fake_nvml.c into one libnvidia-ml.so.1, so every energy and power value still comes
 * from the fake's scripted profile; the calls added here return fixed, plausible values of an
 * H100-class device, or NVML_ERROR_NOT_SUPPORTED where a real driver may say so too.
 *
 * Build: cc -shared -fPIC -O2 fake_nvml.c nvml_shim.c -o libnvidia-ml.so.1 -lm
 */
#define _POSIX_C_SOURCE 200809L

#include <stdio.h>
#include <string.h>

#define SHIM_EXPORT __attribute__((visibility("default")))

typedef int nvmlReturn_t;
/* Same layout as fake_nvml.c's handle. */
typedef struct fake_nvml_device {
  unsigned int index;
} * nvmlDevice_t;

enum {
  OK = 0,
  UNINITIALIZED = 1,
  INVALID_ARGUMENT = 2,
  NOT_SUPPORTED = 3,
  INSUFFICIENT_SIZE = 7,
};

/* From fake_nvml.c (same library). */
nvmlReturn_t nvmlInit_v2(void);
nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int* count);
nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t* device);
nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t device, char* uuid, unsigned int length);
nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t device, char* name, unsigned int length);
nvmlReturn_t nvmlDeviceGetPowerUsage(nvmlDevice_t device, unsigned int* power);
int fake_nvml_init_count(void);

static nvmlReturn_t check(nvmlDevice_t d) {
  if (fake_nvml_init_count() <= 0) return UNINITIALIZED;
  return d == NULL ? INVALID_ARGUMENT : OK;
}

/* The checks of a device query: NVML initialised, a device, somewhere to write the answer. */
static nvmlReturn_t check_out(nvmlDevice_t d, const void* out) {
  nvmlReturn_t rc = check(d);
  if (rc != OK) return rc;
  return out == NULL ? INVALID_ARGUMENT : OK;
}

static nvmlReturn_t put_uint(nvmlDevice_t d, unsigned int* out, unsigned int value) {
  nvmlReturn_t rc = check_out(d, out);
  if (rc == OK) *out = value;
  return rc;
}

static nvmlReturn_t put_string(const char* s, char* out, unsigned int length) {
  if (out == NULL) return INVALID_ARGUMENT;
  if (strlen(s) + 1 > length) return INSUFFICIENT_SIZE;
  memcpy(out, s, strlen(s) + 1);
  return OK;
}

/* value is evaluated only once the device is known good (it may read d->index). */
#define PUT_UINT(fn, value)                                        \
  SHIM_EXPORT nvmlReturn_t fn(nvmlDevice_t d, unsigned int* out) { \
    nvmlReturn_t rc = check_out(d, out);                           \
    if (rc == OK) *out = (value);                                  \
    return rc;                                                     \
  }

SHIM_EXPORT nvmlReturn_t nvmlInitWithFlags(unsigned int flags) {
  (void)flags;
  return nvmlInit_v2();
}

SHIM_EXPORT nvmlReturn_t nvmlSystemGetDriverVersion(char* out, unsigned int length) {
  return put_string("550.54.15", out, length);
}
SHIM_EXPORT nvmlReturn_t nvmlSystemGetNVMLVersion(char* out, unsigned int length) {
  return put_string("12.550.54.15", out, length);
}
SHIM_EXPORT nvmlReturn_t nvmlSystemGetCudaDriverVersion(int* v) {
  if (v == NULL) return INVALID_ARGUMENT;
  *v = 12040;
  return OK;
}
SHIM_EXPORT nvmlReturn_t nvmlSystemGetCudaDriverVersion_v2(int* v) {
  return nvmlSystemGetCudaDriverVersion(v);
}

PUT_UINT(nvmlDeviceGetIndex, d->index)
PUT_UINT(nvmlDeviceGetMinorNumber, d->index)
PUT_UINT(nvmlDeviceGetArchitecture, 9u) /* NVML_DEVICE_ARCH_HOPPER */
PUT_UINT(nvmlDeviceGetPersistenceMode, 1u)
PUT_UINT(nvmlDeviceGetComputeMode, 0u)
PUT_UINT(nvmlDeviceGetCurrPcieLinkGeneration, 5u)
PUT_UINT(nvmlDeviceGetMaxPcieLinkGeneration, 5u)
PUT_UINT(nvmlDeviceGetCurrPcieLinkWidth, 16u)
PUT_UINT(nvmlDeviceGetMaxPcieLinkWidth, 16u)
PUT_UINT(nvmlDeviceGetFanSpeed, 0u)
PUT_UINT(nvmlDeviceGetPerformanceState, 0u)

SHIM_EXPORT nvmlReturn_t nvmlDeviceGetTemperature(nvmlDevice_t d, int sensor, unsigned int* t) {
  (void)sensor;
  return put_uint(d, t, 40u);
}

SHIM_EXPORT nvmlReturn_t nvmlDeviceGetClockInfo(nvmlDevice_t d, int type, unsigned int* mhz) {
  (void)type;
  return put_uint(d, mhz, 1755u);
}
SHIM_EXPORT nvmlReturn_t nvmlDeviceGetMaxClockInfo(nvmlDevice_t d, int type, unsigned int* mhz) {
  return nvmlDeviceGetClockInfo(d, type, mhz);
}

/* nvmlMemory_t: total, free, used (bytes). */
typedef struct {
  unsigned long long total, free, used;
} shim_memory_t;
SHIM_EXPORT nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t d, shim_memory_t* m) {
  nvmlReturn_t rc = check_out(d, m);
  if (rc != OK) return rc;
  m->total = 80ULL << 30;
  m->used = 1ULL << 30;
  m->free = m->total - m->used;
  return OK;
}
/* nvmlMemory_v2_t: version, total, reserved, free, used. */
typedef struct {
  unsigned int version;
  unsigned long long total, reserved, free, used;
} shim_memory_v2_t;
SHIM_EXPORT nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t d, shim_memory_v2_t* m) {
  nvmlReturn_t rc = check_out(d, m);
  if (rc != OK) return rc;
  m->total = 80ULL << 30;
  m->reserved = 0;
  m->used = 1ULL << 30;
  m->free = m->total - m->used;
  return OK;
}

/* nvmlUtilization_t: gpu, memory (%). */
typedef struct {
  unsigned int gpu, memory;
} shim_utilization_t;
SHIM_EXPORT nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t d, shim_utilization_t* u) {
  nvmlReturn_t rc = check_out(d, u);
  if (rc != OK) return rc;
  u->gpu = 100;
  u->memory = 50;
  return OK;
}

/* No processes on the fake device: count 0, success. */
#define NO_PROCESSES(fn)                                                          \
  SHIM_EXPORT nvmlReturn_t fn(nvmlDevice_t d, unsigned int* count, void* infos) { \
    (void)infos;                                                                  \
    return put_uint(d, count, 0u);                                                \
  }
NO_PROCESSES(nvmlDeviceGetComputeRunningProcesses)
NO_PROCESSES(nvmlDeviceGetComputeRunningProcesses_v2)
NO_PROCESSES(nvmlDeviceGetComputeRunningProcesses_v3)
NO_PROCESSES(nvmlDeviceGetGraphicsRunningProcesses)
NO_PROCESSES(nvmlDeviceGetGraphicsRunningProcesses_v2)
NO_PROCESSES(nvmlDeviceGetGraphicsRunningProcesses_v3)
NO_PROCESSES(nvmlDeviceGetMPSComputeRunningProcesses_v3)

SHIM_EXPORT nvmlReturn_t nvmlDeviceGetSerial(nvmlDevice_t d, char* out, unsigned int length) {
  char buf[32];
  nvmlReturn_t rc = check(d);
  if (rc != OK) return rc;
  snprintf(buf, sizeof buf, "FAKE%08u", d->index);
  return put_string(buf, out, length);
}

/* The fake itself implements the power limits, compute capability, PCI info and lookup by UUID
   (greenml reads them); this file adds only what the peers call beyond those. */

/* Things a real driver may not support either: callers handle NOT_SUPPORTED. */
#define UNSUPPORTED(fn) \
  SHIM_EXPORT nvmlReturn_t fn(void) { return NOT_SUPPORTED; }
UNSUPPORTED(nvmlDeviceGetFieldValues)
UNSUPPORTED(nvmlDeviceGetC2cModeInfoV)
UNSUPPORTED(nvmlDeviceGetTemperatureV)
UNSUPPORTED(nvmlDeviceGetPciInfo)
UNSUPPORTED(nvmlDeviceGetSupportedMemoryClocks)
UNSUPPORTED(nvmlDeviceGetSupportedGraphicsClocks)
UNSUPPORTED(nvmlDeviceGetMigMode)
UNSUPPORTED(nvmlDeviceGetBoardPartNumber)
