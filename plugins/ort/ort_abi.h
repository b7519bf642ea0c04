/* The part of ONNX Runtime's C API that mlpdeploy's compiled CPU kernels use, declared by mlpdeploy.
 *
 * Why declared here: the onnxruntime wheel ships no C/C++ headers, and no package reachable from
 * mlpdeploy's machines provides them. ONNX Runtime's C API is a table of function pointers
 * (OrtApi) whose entries never move: a release only appends new ones, and OrtGetApiBase()->
 * GetApi(v) hands out the table as of API version v (NULL if the runtime is older). So a client
 * can call a function through its fixed slot number. mlpdeploy declares the slots it calls —
 * all present since API version 1 — and asks for API version 13 (ONNX Runtime 1.13), whose
 * OrtCustomOp layout (13 fields, below) every later runtime still accepts from a client that
 * says it is version 13.
 *
 * Checks at load time: RegisterCustomOps refuses a runtime whose version string is not 1.x or
 * that returns no table for version 13 (ort_library.c); the Python loader checks the onnxruntime
 * package version and this library's own ABI tag (plugins/ort/library.py). The slot numbers are
 * exercised by tests that run the kernel inside ONNX Runtime against the torch reference.
 */
#ifndef MLPDEPLOY_ORT_ABI_H
#define MLPDEPLOY_ORT_ABI_H

#include <stddef.h>
#include <stdint.h>

#define MD_ORT_API_VERSION 13
#define MD_ABI_TAG "mlpdeploy-ort-abi-1 api13 customop13"

typedef struct OrtStatus OrtStatus; /* opaque to clients; NULL means success */
typedef struct OrtKernelInfo OrtKernelInfo;
typedef struct OrtKernelContext OrtKernelContext;
typedef struct OrtValue OrtValue;
typedef struct OrtTensorTypeAndShapeInfo OrtTensorTypeAndShapeInfo;
typedef struct OrtSessionOptions OrtSessionOptions;
typedef struct OrtCustomOpDomain OrtCustomOpDomain;

/* OrtApi is a struct of nothing but function pointers: read it as an array of them. */
typedef void (*md_ort_fn)(void);
typedef md_ort_fn MdOrtApi;

typedef struct MdOrtApiBase {
  const void* (*GetApi)(uint32_t version);
  const char* (*GetVersionString)(void);
} MdOrtApiBase;

/* Slot numbers in OrtApi (stable since API version 1). */
enum {
  MD_SLOT_CreateStatus = 0,
  MD_SLOT_CreateCustomOpDomain = 26,
  MD_SLOT_CustomOpDomain_Add = 27,
  MD_SLOT_AddCustomOpDomain = 28,
  MD_SLOT_GetTensorMutableData = 51,
  MD_SLOT_GetTensorElementType = 60,
  MD_SLOT_GetDimensionsCount = 61,
  MD_SLOT_GetDimensions = 62,
  MD_SLOT_GetTensorTypeAndShape = 65,
  MD_SLOT_KernelInfoGetAttribute_float = 85,
  MD_SLOT_KernelInfoGetAttribute_int64 = 86,
  MD_SLOT_KernelInfoGetAttribute_string = 87,
  MD_SLOT_KernelContext_GetInput = 90,
  MD_SLOT_KernelContext_GetOutput = 91,
  MD_SLOT_ReleaseStatus = 93,
  MD_SLOT_ReleaseTensorTypeAndShapeInfo = 99,
  MD_SLOT_KernelContext_ParallelFor = 274, /* API version 17 (ONNX Runtime 1.17) on: used only through md_api17 */
};

/* The signature of each slot used, as a function pointer type. */
typedef OrtStatus* (*MdCreateStatus)(int code, const char* msg);
typedef OrtStatus* (*MdCreateCustomOpDomain)(const char* domain, OrtCustomOpDomain** out);
typedef OrtStatus* (*MdCustomOpDomain_Add)(OrtCustomOpDomain* domain, const void* op);
typedef OrtStatus* (*MdAddCustomOpDomain)(OrtSessionOptions* options, OrtCustomOpDomain* domain);
typedef OrtStatus* (*MdGetTensorMutableData)(OrtValue* value, void** out);
typedef OrtStatus* (*MdGetTensorElementType)(const OrtTensorTypeAndShapeInfo* info, int* out);
typedef OrtStatus* (*MdGetDimensionsCount)(const OrtTensorTypeAndShapeInfo* info, size_t* out);
typedef OrtStatus* (*MdGetDimensions)(const OrtTensorTypeAndShapeInfo* info, int64_t* dims, size_t count);
typedef OrtStatus* (*MdGetTensorTypeAndShape)(const OrtValue* value, OrtTensorTypeAndShapeInfo** out);
typedef OrtStatus* (*MdKernelInfoGetAttribute_float)(const OrtKernelInfo* info, const char* name, float* out);
typedef OrtStatus* (*MdKernelInfoGetAttribute_int64)(const OrtKernelInfo* info, const char* name, int64_t* out);
typedef OrtStatus* (*MdKernelInfoGetAttribute_string)(const OrtKernelInfo* info, const char* name, char* out, size_t* size);
typedef OrtStatus* (*MdKernelContext_GetInput)(const OrtKernelContext* context, size_t index, const OrtValue** out);
typedef OrtStatus* (*MdKernelContext_GetOutput)(OrtKernelContext* context, size_t index, const int64_t* dims, size_t count, OrtValue** out);
typedef void (*MdReleaseStatus)(OrtStatus* status);
typedef void (*MdReleaseTensorTypeAndShapeInfo)(OrtTensorTypeAndShapeInfo* info);
typedef OrtStatus* (*MdKernelContext_ParallelFor)(const OrtKernelContext* context, void (*fn)(void* data, size_t index),
                                                  size_t total, size_t batches, void* data);

#define MD_ORT(api, name) ((Md##name)((api)[MD_SLOT_##name]))

enum { MD_ORT_FAIL = 1, MD_ORT_INVALID_ARGUMENT = 2 };         /* OrtErrorCode */
enum { MD_TENSOR_UNDEFINED = 0, MD_TENSOR_FLOAT = 1 };         /* ONNXTensorElementDataType */
enum { MD_INPUT_OUTPUT_REQUIRED = 0 };                        /* OrtCustomOpInputOutputCharacteristic */
enum { MD_MEM_DEFAULT = 0 };                                   /* OrtMemType */

/* OrtCustomOp as of API version 13: the runtime reads exactly these fields from a version-13 op. */
typedef struct MdCustomOp {
  uint32_t version;
  void* (*CreateKernel)(const struct MdCustomOp* op, const MdOrtApi* api, const OrtKernelInfo* info);
  const char* (*GetName)(const struct MdCustomOp* op);
  const char* (*GetExecutionProviderType)(const struct MdCustomOp* op);
  int (*GetInputType)(const struct MdCustomOp* op, size_t index);
  size_t (*GetInputTypeCount)(const struct MdCustomOp* op);
  int (*GetOutputType)(const struct MdCustomOp* op, size_t index);
  size_t (*GetOutputTypeCount)(const struct MdCustomOp* op);
  void (*KernelCompute)(void* kernel, OrtKernelContext* context);
  void (*KernelDestroy)(void* kernel);
  int (*GetInputCharacteristic)(const struct MdCustomOp* op, size_t index);
  int (*GetOutputCharacteristic)(const struct MdCustomOp* op, size_t index);
  int (*GetInputMemoryType)(const struct MdCustomOp* op, size_t index);
} MdCustomOp;

/* A tensor as the kernels see it. */
typedef struct MdTensor {
  void* data;
  int64_t dims[8];
  size_t rank;
  int type;
} MdTensor;

/* Filled by ort_library.c: the API table of the running ONNX Runtime, and the same table asked
 * for as version 17 (NULL on runtimes older than 1.17: then md_kernel_parallel_for uses threads
 * of its own). */
extern const MdOrtApi* md_api;
extern const MdOrtApi* md_api17;

/* Read input `index` (rank <= 8) of a kernel context; returns 0 on success. */
int md_input(OrtKernelContext* context, size_t index, MdTensor* out);
/* Allocate output `index` with `dims`; returns its data or NULL. */
void* md_output(OrtKernelContext* context, size_t index, const int64_t* dims, size_t rank);
/* Split [0, n) into jobs run on up to md_threads(work) threads; `run(arg, begin, end)`. */
void md_parallel_for(int64_t n, int64_t work_per_item, void (*run)(void* arg, int64_t begin, int64_t end), void* arg);
/* Run `run(arg, i, i + 1)` for i in [0, n) on ONNX Runtime's own intra-op threads (the session's
 * pool, already awake between nodes), else as md_parallel_for. */
void md_kernel_parallel_for(OrtKernelContext* context, int64_t n, void (*run)(void* arg, int64_t begin, int64_t end), void* arg);

#endif
