/* GroupRational as an ONNX Runtime CPU kernel (float32), for mlpdeploy's custom-op library.
 *
 * Same definition as reference.py: channel c of x [..., C] uses group g = c / (C/G);
 * P(x) = a_0 + … + a_m x^m and Q(x) = 1 + Σ|b_i||x|^i (form A) or 1 + |Σ b_i x^i| (form B), both by
 * Horner in fp32, y = P/Q. One read and one write of x; each (row, group) run is a contiguous
 * loop with the group's coefficients in scalars, which the compiler vectorizes (degrees (5, 4)
 * get an unrolled loop; others a generic one). Rows are split across threads (ort_library.c).
 * Inputs it cannot take (bad shapes) give a NaN output: a version-13 kernel cannot return an
 * error, and mlpdeploy's build checks shapes before it registers this library. */
#include <math.h>
#include <stdlib.h>

#include "../ort/ort_abi.h"

#define GR_MAX_TERMS 16

typedef struct {
  char form; /* 'A' or 'B' (anything else: NaN output) */
} GrKernel;

typedef struct {
  const float* x;
  float* y;
  const float* num;
  const float* den;
  int64_t channels, groups, per_group, numerator_rows, m, n;
  char form;
} GrWork;

static void gr_54(const float* restrict x, float* restrict y, int64_t count, const float* a, const float* b, char form) {
  const float a0 = a[0], a1 = a[1], a2 = a[2], a3 = a[3], a4 = a[4], a5 = a[5];
  if (form == 'A') {
    const float b1 = fabsf(b[0]), b2 = fabsf(b[1]), b3 = fabsf(b[2]), b4 = fabsf(b[3]);
    for (int64_t j = 0; j < count; j++) {
      const float v = x[j], av = fabsf(v);
      const float p = ((((a5 * v + a4) * v + a3) * v + a2) * v + a1) * v + a0;
      const float q = ((((b4 * av + b3) * av + b2) * av + b1) * av) + 1.0f;
      y[j] = p / q;
    }
  } else {
    const float b1 = b[0], b2 = b[1], b3 = b[2], b4 = b[3];
    for (int64_t j = 0; j < count; j++) {
      const float v = x[j];
      const float p = ((((a5 * v + a4) * v + a3) * v + a2) * v + a1) * v + a0;
      const float s = (((b4 * v + b3) * v + b2) * v + b1) * v;
      y[j] = p / (fabsf(s) + 1.0f);
    }
  }
}

static void gr_generic(const float* x, float* y, int64_t count, const float* a, int64_t m, const float* b, int64_t n, char form) {
  float bb[GR_MAX_TERMS];
  for (int64_t i = 0; i < n; i++) bb[i] = form == 'A' ? fabsf(b[i]) : b[i];
  for (int64_t j = 0; j < count; j++) {
    const float v = x[j], t = form == 'A' ? fabsf(v) : v;
    float p = a[m];
    for (int64_t i = m - 1; i >= 0; i--) p = p * v + a[i];
    float s = bb[n - 1];
    for (int64_t i = n - 2; i >= 0; i--) s = s * t + bb[i];
    y[j] = p / ((form == 'A' ? s * t : fabsf(s * t)) + 1.0f);
  }
}

static void gr_rows(void* arg, int64_t begin, int64_t end) {
  const GrWork* w = (const GrWork*)arg;
  for (int64_t r = begin; r < end; r++) {
    for (int64_t g = 0; g < w->groups; g++) {
      const float* a = w->num + (w->numerator_rows == 1 ? 0 : g) * (w->m + 1);
      const float* b = w->den + g * w->n;
      const int64_t offset = r * w->channels + g * w->per_group;
      if (w->m == 5 && w->n == 4)
        gr_54(w->x + offset, w->y + offset, w->per_group, a, b, w->form);
      else
        gr_generic(w->x + offset, w->y + offset, w->per_group, a, w->m, b, w->n, w->form);
    }
  }
}

static void* gr_create(const MdCustomOp* op, const MdOrtApi* api, const OrtKernelInfo* info) {
  (void)op;
  GrKernel* kernel = (GrKernel*)calloc(1, sizeof *kernel);
  if (kernel == NULL) return NULL;
  char form[8] = {0};
  size_t size = sizeof form;
  OrtStatus* status = MD_ORT(api, KernelInfoGetAttribute_string)(info, "form", form, &size);
  if (status != NULL) {
    MD_ORT(api, ReleaseStatus)(status);
    form[0] = 'A'; /* the attribute's default */
    form[1] = 0;
  }
  kernel->form = (form[1] == 0 && (form[0] == 'A' || form[0] == 'B')) ? form[0] : '?';
  return kernel;
}

static void gr_compute(void* k, OrtKernelContext* context) {
  const GrKernel* kernel = (const GrKernel*)k;
  MdTensor x, num, den;
  if (md_input(context, 0, &x) || md_input(context, 1, &num) || md_input(context, 2, &den)) return;
  float* y = (float*)md_output(context, 0, x.dims, x.rank);
  if (y == NULL) return;
  int64_t total = 1;
  for (size_t i = 0; i < x.rank; i++) total *= x.dims[i];
  const int64_t channels = x.rank ? x.dims[x.rank - 1] : 0;
  const int64_t groups = den.rank == 2 ? den.dims[0] : 0, n = den.rank == 2 ? den.dims[1] : 0;
  const int64_t numerator_rows = num.rank == 2 ? num.dims[0] : 0, m = num.rank == 2 ? num.dims[1] - 1 : -1;
  const int ok = x.type == MD_TENSOR_FLOAT && num.type == MD_TENSOR_FLOAT && den.type == MD_TENSOR_FLOAT &&
                 kernel->form != '?' && groups > 0 && channels > 0 && channels % groups == 0 && n >= 1 && n <= GR_MAX_TERMS &&
                 m >= 0 && m < GR_MAX_TERMS && (numerator_rows == 1 || numerator_rows == groups);
  if (!ok) {
    for (int64_t i = 0; i < total; i++) y[i] = NAN;
    return;
  }
  if (total == 0) return;
  GrWork work = {(const float*)x.data, y, (const float*)num.data, (const float*)den.data,
                 channels, groups, channels / groups, numerator_rows, m, n, kernel->form};
  md_parallel_for(total / channels, channels, gr_rows, &work);
}

static void gr_destroy(void* kernel) { free(kernel); }
static const char* gr_name(const MdCustomOp* op) { (void)op; return "GroupRational"; }
static const char* gr_provider(const MdCustomOp* op) { (void)op; return NULL; /* CPU */ }
static int gr_float(const MdCustomOp* op, size_t i) { (void)op; (void)i; return MD_TENSOR_FLOAT; }
static size_t gr_inputs(const MdCustomOp* op) { (void)op; return 3; }
static size_t gr_outputs(const MdCustomOp* op) { (void)op; return 1; }
static int gr_required(const MdCustomOp* op, size_t i) { (void)op; (void)i; return MD_INPUT_OUTPUT_REQUIRED; }
static int gr_memory(const MdCustomOp* op, size_t i) { (void)op; (void)i; return MD_MEM_DEFAULT; }

MdCustomOp md_group_rational_op = {
    MD_ORT_API_VERSION, gr_create, gr_name, gr_provider, gr_float, gr_inputs, gr_float, gr_outputs,
    gr_compute, gr_destroy, gr_required, gr_required, gr_memory,
};
