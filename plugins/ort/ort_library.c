/* mlpdeploy's ONNX Runtime custom-op library: RegisterCustomOps (the entry point
 * SessionOptions.register_custom_ops_library calls), the ABI checks, tensor access helpers and a
 * small parallel-for. The kernels live beside their ops (plugins/<op>/ort_kernel.c). */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ort_abi.h"

const MdOrtApi* md_api = NULL;
const MdOrtApi* md_api17 = NULL;

/* One entry per kernel: its OrtCustomOp, defined in the op's ort_kernel.c. */
extern MdCustomOp md_group_rational_op;
extern MdCustomOp md_sparse_mlp_op;
extern MdCustomOp md_matmul_int4_op;
extern MdCustomOp md_matmul_int8_op;
extern MdCustomOp md_cached_attention_op;
static MdCustomOp* const md_ops[] = {&md_group_rational_op, &md_sparse_mlp_op, &md_matmul_int4_op, &md_matmul_int8_op,
                                     &md_cached_attention_op};

/* The ABI this library was built for, checked by the Python loader before registering it. */
const char* mlpdeploy_ort_abi(void) { return MD_ABI_TAG; }

static OrtStatus* md_error(const MdOrtApiBase* base, const char* message) {
  /* CreateStatus is slot 0 of every API version: report through the oldest table. */
  const MdOrtApi* any = (const MdOrtApi*)base->GetApi(1);
  return any ? MD_ORT(any, CreateStatus)(MD_ORT_FAIL, message) : NULL;
}

OrtStatus* RegisterCustomOps(OrtSessionOptions* options, const MdOrtApiBase* base) {
  const char* version = base->GetVersionString();
  if (version == NULL || strncmp(version, "1.", 2) != 0)
    return md_error(base, "mlpdeploy's CPU kernels were written against ONNX Runtime 1.x's C API (API version 13); "
                          "this runtime reports another major version: rebuild without --ort-kernels");
  md_api = (const MdOrtApi*)base->GetApi(MD_ORT_API_VERSION);
  if (md_api == NULL)
    return md_error(base, "this ONNX Runtime has no C API version 13 (it is older than 1.13); upgrade onnxruntime");
  md_api17 = (const MdOrtApi*)base->GetApi(17);
  OrtCustomOpDomain* domain = NULL;
  OrtStatus* status = MD_ORT(md_api, CreateCustomOpDomain)("mlpdeploy", &domain);
  for (size_t i = 0; status == NULL && i < sizeof md_ops / sizeof md_ops[0]; i++)
    status = MD_ORT(md_api, CustomOpDomain_Add)(domain, md_ops[i]);
  /* The domain must outlive every session made with these options: it is never released. */
  return status ? status : MD_ORT(md_api, AddCustomOpDomain)(options, domain);
}

int md_input(OrtKernelContext* context, size_t index, MdTensor* out) {
  const OrtValue* value = NULL;
  OrtTensorTypeAndShapeInfo* info = NULL;
  if (MD_ORT(md_api, KernelContext_GetInput)(context, index, &value) || value == NULL) return 1;
  if (MD_ORT(md_api, GetTensorTypeAndShape)(value, &info)) return 1;
  int failed = MD_ORT(md_api, GetDimensionsCount)(info, &out->rank) != NULL || out->rank > 8 ||
               MD_ORT(md_api, GetDimensions)(info, out->dims, out->rank) != NULL ||
               MD_ORT(md_api, GetTensorElementType)(info, &out->type) != NULL;
  MD_ORT(md_api, ReleaseTensorTypeAndShapeInfo)(info);
  if (failed) return 1;
  return MD_ORT(md_api, GetTensorMutableData)((OrtValue*)value, &out->data) != NULL;
}

void* md_output(OrtKernelContext* context, size_t index, const int64_t* dims, size_t rank) {
  OrtValue* value = NULL;
  void* data = NULL;
  if (MD_ORT(md_api, KernelContext_GetOutput)(context, index, dims, rank, &value) || value == NULL) return NULL;
  if (MD_ORT(md_api, GetTensorMutableData)(value, &data)) return NULL;
  return data;
}

/* Threads: $MLPDEPLOY_ORT_THREADS, else the online CPUs; one more thread per 64 Ki work units. */
#define MD_MAX_THREADS 64
#define MD_WORK_PER_THREAD (1 << 16)

static int md_thread_budget(void) {
  const char* env = getenv("MLPDEPLOY_ORT_THREADS");
  long n = env ? strtol(env, NULL, 10) : sysconf(_SC_NPROCESSORS_ONLN);
  return n < 1 ? 1 : n > MD_MAX_THREADS ? MD_MAX_THREADS : (int)n;
}

typedef struct {
  void (*run)(void*, int64_t, int64_t);
  void* arg;
  int64_t begin, end;
} MdJob;

static void* md_job(void* p) {
  MdJob* job = (MdJob*)p;
  job->run(job->arg, job->begin, job->end);
  return NULL;
}

void md_parallel_for(int64_t n, int64_t work_per_item, void (*run)(void*, int64_t, int64_t), void* arg) {
  int64_t work = n * (work_per_item > 0 ? work_per_item : 1);
  int64_t threads = work / MD_WORK_PER_THREAD + 1;
  if (threads > md_thread_budget()) threads = md_thread_budget();
  if (threads > n) threads = n;
  if (threads <= 1) {
    if (n > 0) run(arg, 0, n);
    return;
  }
  MdJob jobs[MD_MAX_THREADS];
  pthread_t ids[MD_MAX_THREADS];
  int started[MD_MAX_THREADS] = {0};
  for (int64_t t = 0; t < threads; t++) jobs[t] = (MdJob){run, arg, n * t / threads, n * (t + 1) / threads};
  for (int64_t t = 1; t < threads; t++) started[t] = pthread_create(&ids[t], NULL, md_job, &jobs[t]) == 0;
  md_job(&jobs[0]);
  for (int64_t t = 1; t < threads; t++) {
    if (started[t]) pthread_join(ids[t], NULL);
    else md_job(&jobs[t]); /* no thread: run its share here */
  }
}

typedef struct {
  void (*run)(void*, int64_t, int64_t);
  void* arg;
} MdPoolJob;

static void md_pool_item(void* p, size_t i) {
  const MdPoolJob* job = (const MdPoolJob*)p;
  job->run(job->arg, (int64_t)i, (int64_t)i + 1);
}

void md_kernel_parallel_for(OrtKernelContext* context, int64_t n, void (*run)(void*, int64_t, int64_t), void* arg) {
  if (n <= 0) return;
  if (md_api17 != NULL) {
    MdPoolJob job = {run, arg};
    OrtStatus* status = MD_ORT(md_api17, KernelContext_ParallelFor)(context, md_pool_item, (size_t)n, 0, &job);
    if (status == NULL) return;
    MD_ORT(md_api, ReleaseStatus)(status); /* the runtime refused: run it here */
  }
  md_parallel_for(n, 1 << 16, run, arg);
}
