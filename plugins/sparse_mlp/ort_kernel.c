/* SparseMLP as an ONNX Runtime CPU kernel (float32), for mlpdeploy's custom-op library.
 *
 * Same definition as reference.py. Two passes over the rows x [M, d]:
 *  1. selection: topk mode scores s = (x·P_a)·P_b and keeps each row's k best (ties: lower index,
 *     as ONNX TopK); threshold mode computes the full gate g = act(x·W_gate + b_gate) and keeps
 *     |g| > t. Parallel over neuron chunks.
 *  2. the batch union U, split across threads: each thread computes, for its neurons j, the
 *     hidden a_mj = act(x_m·W_up[j] + b_up[j]) (topk) or g_mj·(x_m·W_up[j] + b_up[j]) (threshold),
 *     zero where row m did not select j, and adds a_mj·W_downᵀ[j] into its own partial y; the
 *     partials are summed at the end. W_up and W_downᵀ are row per neuron, so every gathered
 *     neuron is two contiguous reads; a neuron whose hidden is 0 for every row (ReLU) is not read
 *     from W_downᵀ at all.
 * Dot products keep 16 independent partial sums (vectorizable without reassociation flags).
 * Inputs it cannot take give a NaN output (a version-13 kernel cannot return an error). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../ort/ort_abi.h"

enum { SM_RELU, SM_SILU, SM_GELU, SM_GELU_TANH, SM_NONE, SM_BAD };
enum { SM_TOPK, SM_THRESHOLD, SM_BAD_MODE };

typedef struct {
  int mode, act;
} SmKernel;

typedef struct {
  const float *x, *w_gate, *b_gate, *w_up, *b_up, *w_down, *b_down, *p_a, *p_b, *t;
  float *scores, *hidden_scale, *partials;
  unsigned char* mask;
  const int64_t* uni;
  int64_t m, d, h, r, d_out, n_uni, t_len, k, chunk;
  int mode, act;
} SmWork;

static float sm_act(float v, int act) {
  switch (act) {
    case SM_RELU: return v > 0.0f ? v : 0.0f;
    case SM_SILU: return v / (1.0f + expf(-v));
    case SM_GELU: return 0.5f * v * (1.0f + erff(v * 0.70710678118654752f));
    case SM_GELU_TANH: return 0.5f * v * (1.0f + tanhf(0.79788456080286536f * (v + 0.044715f * v * v * v)));
    default: return v;
  }
}

static float sm_dot(const float* restrict a, const float* restrict b, int64_t n) {
  float acc[16] = {0};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    for (int l = 0; l < 16; l++) acc[l] += a[i + l] * b[i + l];
  float s = 0.0f;
  for (int l = 0; l < 16; l++) s += acc[l];
  for (; i < n; i++) s += a[i] * b[i];
  return s;
}

static void sm_axpy(float* restrict y, const float* restrict w, float a, int64_t n) {
  for (int64_t i = 0; i < n; i++) y[i] += a * w[i];
}

/* Pass 1 over neuron columns [c0, c1): scores (topk: t = x·P_a is in partials, one row of r per m) or gate.
 * The weight row slice is the outer loop, so each slice is read once for all rows (from L1). */
static void sm_select_cols(void* arg, int64_t b0, int64_t b1) {
  const SmWork* w = (const SmWork*)arg;
  const int64_t c0 = b0 * w->chunk, c1 = b1 * w->chunk < w->h ? b1 * w->chunk : w->h, n = c1 - c0;
  for (int64_t m = 0; m < w->m; m++) {
    float* s = w->scores + m * w->h + c0;
    if (w->mode == SM_TOPK) memset(s, 0, (size_t)n * sizeof *s);
    else memcpy(s, w->b_gate + c0, (size_t)n * sizeof *s);
  }
  const int64_t inner = w->mode == SM_TOPK ? w->r : w->d;
  for (int64_t q = 0; q < inner; q++) {
    const float* row = (w->mode == SM_TOPK ? w->p_b : w->w_gate) + q * w->h + c0;
    for (int64_t m = 0; m < w->m; m++) {
      const float a = w->mode == SM_TOPK ? w->partials[m * w->r + q] : w->x[m * w->d + q];
      sm_axpy(w->scores + m * w->h + c0, row, a, n);
    }
  }
  if (w->mode == SM_TOPK) return;
  for (int64_t m = 0; m < w->m; m++) {
    float* s = w->scores + m * w->h + c0;
    for (int64_t j = 0; j < n; j++) {
      s[j] = sm_act(s[j], w->act);
      w->mask[m * w->h + c0 + j] = fabsf(s[j]) > w->t[w->t_len == 1 ? 0 : c0 + j];
    }
  }
}

/* The k-th largest of v[0..n) (1-based k), by quickselect; v is reordered. */
static float sm_kth_largest(float* v, int64_t n, int64_t k) {
  int64_t lo = 0, hi = n - 1, want = k - 1;
  while (lo < hi) {
    const float pivot = v[lo + (hi - lo) / 2];
    int64_t i = lo, j = hi;
    while (i <= j) {
      while (v[i] > pivot) i++;
      while (v[j] < pivot) j--;
      if (i <= j) { const float t = v[i]; v[i] = v[j]; v[j] = t; i++; j--; }
    }
    if (want <= j) hi = j;
    else if (want >= i) lo = i;
    else return v[want];
  }
  return v[want];
}

/* Row m's k best scores into mask (ties at the k-th value: lower indices first). */
static void sm_topk_row(const SmWork* w, int64_t m, float* tmp) {
  const float* s = w->scores + m * w->h;
  unsigned char* mask = w->mask + m * w->h;
  memcpy(tmp, s, (size_t)w->h * sizeof *tmp);
  const float kth = sm_kth_largest(tmp, w->h, w->k);
  int64_t above = 0;
  for (int64_t j = 0; j < w->h; j++) above += s[j] > kth;
  int64_t ties = w->k - above;
  for (int64_t j = 0; j < w->h; j++) {
    mask[j] = s[j] > kth || (s[j] == kth && ties > 0);
    if (s[j] == kth && ties > 0) ties--;
  }
}

/* Pass 2 over union entries [u0, u1) (chunk b of the union): hidden and a partial y per chunk. */
static void sm_union_chunk(void* arg, int64_t b0, int64_t b1) {
  const SmWork* w = (const SmWork*)arg;
  for (int64_t b = b0; b < b1; b++) {
    float* y = w->partials + b * w->m * w->d_out;
    memset(y, 0, (size_t)(w->m * w->d_out) * sizeof *y);
    const int64_t u1 = (b + 1) * w->chunk < w->n_uni ? (b + 1) * w->chunk : w->n_uni;
    for (int64_t u = b * w->chunk; u < u1; u++) {
      const int64_t j = w->uni[u];
      const float* up = w->w_up + j * w->d;
      const float* down = w->w_down + j * w->d_out;
      for (int64_t m = 0; m < w->m; m++) {
        if (!w->mask[m * w->h + j]) continue;
        float a = sm_dot(w->x + m * w->d, up, w->d) + w->b_up[j];
        a = w->mode == SM_TOPK ? sm_act(a, w->act) : a * w->scores[m * w->h + j];
        if (a != 0.0f) sm_axpy(y + m * w->d_out, down, a, w->d_out);
      }
    }
  }
}

static int sm_parse(const char* s, const char* const* names, int n) {
  for (int i = 0; i < n; i++)
    if (strcmp(s, names[i]) == 0) return i;
  return n;
}

static void* sm_create(const MdCustomOp* op, const MdOrtApi* api, const OrtKernelInfo* info) {
  (void)op;
  static const char* const acts[] = {"relu", "silu", "gelu", "gelu_tanh", "none"};
  static const char* const modes[] = {"topk", "threshold"};
  SmKernel* kernel = (SmKernel*)calloc(1, sizeof *kernel);
  if (kernel == NULL) return NULL;
  char buf[32];
  size_t size = sizeof buf;
  OrtStatus* status = MD_ORT(api, KernelInfoGetAttribute_string)(info, "mode", buf, &size);
  if (status) { MD_ORT(api, ReleaseStatus)(status); strcpy(buf, "topk"); }
  kernel->mode = sm_parse(buf, modes, 2);
  size = sizeof buf;
  status = MD_ORT(api, KernelInfoGetAttribute_string)(info, "activation", buf, &size);
  if (status) { MD_ORT(api, ReleaseStatus)(status); strcpy(buf, "relu"); }
  kernel->act = sm_parse(buf, acts, 5);
  return kernel;
}

static void sm_fill_nan(float* y, int64_t n) {
  for (int64_t i = 0; i < n; i++) y[i] = NAN;
}

static void sm_compute(void* k, OrtKernelContext* context) {
  const SmKernel* kernel = (const SmKernel*)k;
  MdTensor in[8];
  for (size_t i = 0; i < 8; i++)
    if (md_input(context, i, &in[i])) return;
  const int topk = kernel->mode == SM_TOPK;
  const MdTensor *x = &in[0], *w_up = &in[topk ? 1 : 3], *b_up = &in[topk ? 2 : 4], *w_down = &in[topk ? 3 : 5],
                 *b_down = &in[topk ? 4 : 6];
  const int64_t d = x->rank ? x->dims[x->rank - 1] : 0, h = w_up->rank == 2 ? w_up->dims[0] : 0;
  const int64_t d_out = w_down->rank == 2 ? w_down->dims[1] : 0;
  int64_t out_dims[8], m = 1;
  for (size_t i = 0; i < x->rank; i++) out_dims[i] = x->dims[i];
  for (size_t i = 0; i + 1 < x->rank; i++) m *= x->dims[i];
  if (x->rank) out_dims[x->rank - 1] = d_out;
  float* y = (float*)md_output(context, 0, out_dims, x->rank);
  if (y == NULL) return;
  int ok = kernel->mode != SM_BAD_MODE && kernel->act != SM_BAD && x->type == MD_TENSOR_FLOAT && h > 0 && d > 0 &&
           w_up->dims[1] == d && w_down->rank == 2 && w_down->dims[0] == h && b_up->rank == 1 && b_up->dims[0] == h &&
           b_down->rank == 1 && b_down->dims[0] == d_out;
  SmWork w = {0};
  w.m = m; w.d = d; w.h = h; w.d_out = d_out; w.mode = kernel->mode; w.act = kernel->act;
  w.x = (const float*)x->data; w.w_up = (const float*)w_up->data; w.b_up = (const float*)b_up->data;
  w.w_down = (const float*)w_down->data; w.b_down = (const float*)b_down->data;
  if (topk) {
    ok = ok && in[5].rank == 2 && in[5].dims[0] == d && in[6].rank == 2 && in[6].dims[1] == h && in[6].dims[0] == in[5].dims[1] &&
         in[7].type == 7 /* int64 */ && in[7].rank == 1 && in[7].dims[0] == 1;
    w.p_a = (const float*)in[5].data; w.p_b = (const float*)in[6].data; w.r = ok ? in[5].dims[1] : 0;
    w.k = ok ? *(const int64_t*)in[7].data : 0;
    ok = ok && w.k >= 1 && w.k <= h;
  } else {
    ok = ok && in[1].rank == 2 && in[1].dims[0] == d && in[1].dims[1] == h && in[2].rank == 1 && in[2].dims[0] == h &&
         in[7].type == MD_TENSOR_FLOAT && in[7].rank == 1 && (in[7].dims[0] == 1 || in[7].dims[0] == h);
    w.w_gate = (const float*)in[1].data; w.b_gate = (const float*)in[2].data; w.t = (const float*)in[7].data;
    w.t_len = ok ? in[7].dims[0] : 0;
  }
  if (!ok) { sm_fill_nan(y, m * d_out); return; }
  if (m == 0) return;
  w.scores = (float*)malloc((size_t)(m * h) * sizeof(float));
  w.mask = (unsigned char*)calloc((size_t)(m * h), 1);
  int64_t* uni = (int64_t*)malloc((size_t)h * sizeof(int64_t));
  float* tmp = (float*)malloc((size_t)h * sizeof(float));
  w.partials = (float*)malloc((size_t)(m * (w.r > 0 ? w.r : 1)) * sizeof(float));
  if (!w.scores || !w.mask || !uni || !tmp || !w.partials) { sm_fill_nan(y, m * d_out); goto done; }
  if (topk) /* t = x·P_a, [M, r] */
    for (int64_t r = 0; r < m; r++) {
      memset(w.partials + r * w.r, 0, (size_t)w.r * sizeof(float));
      for (int64_t i = 0; i < d; i++) sm_axpy(w.partials + r * w.r, w.p_a + i * w.r, w.x[r * d + i], w.r);
    }
  w.chunk = 256;
  md_parallel_for((h + w.chunk - 1) / w.chunk, w.chunk * (topk ? w.r : d) * m, sm_select_cols, &w);
  if (topk)
    for (int64_t r = 0; r < m; r++) sm_topk_row(&w, r, tmp);
  int64_t n_uni = 0;
  for (int64_t j = 0; j < h; j++) {
    int any = 0;
    for (int64_t r = 0; r < m && !any; r++) any = w.mask[r * h + j];
    if (any) uni[n_uni++] = j;
  }
  w.uni = uni; w.n_uni = n_uni;
  /* Chunks of the union: one per thread's share; each keeps its own partial y [M, d_out]. */
  const int64_t chunks = n_uni < 8 ? 1 : 8;
  w.chunk = (n_uni + chunks - 1) / chunks;
  free(w.partials);
  w.partials = (float*)malloc((size_t)(chunks * m * d_out) * sizeof(float));
  if (!w.partials) { sm_fill_nan(y, m * d_out); goto done; }
  md_parallel_for(chunks, w.chunk * m * (d + d_out), sm_union_chunk, &w);
  for (int64_t r = 0; r < m; r++) {
    float* yr = y + r * d_out;
    memcpy(yr, w.b_down, (size_t)d_out * sizeof(float));
    for (int64_t c = 0; c < chunks; c++) sm_axpy(yr, w.partials + (c * m + r) * d_out, 1.0f, d_out);
  }
done:
  free(w.scores); free(w.mask); free(uni); free(tmp); free(w.partials);
}

static void sm_destroy(void* kernel) { free(kernel); }
static const char* sm_name(const MdCustomOp* op) { (void)op; return "SparseMLP"; }
static const char* sm_provider(const MdCustomOp* op) { (void)op; return NULL; /* CPU */ }
/* Input 7 is int64 k (topk) or float threshold: left undefined (any type), checked in sm_compute. */
static int sm_input_type(const MdCustomOp* op, size_t i) { (void)op; return i == 7 ? MD_TENSOR_UNDEFINED : MD_TENSOR_FLOAT; }
static int sm_float(const MdCustomOp* op, size_t i) { (void)op; (void)i; return MD_TENSOR_FLOAT; }
static size_t sm_inputs(const MdCustomOp* op) { (void)op; return 8; }
static size_t sm_outputs(const MdCustomOp* op) { (void)op; return 1; }
static int sm_required(const MdCustomOp* op, size_t i) { (void)op; (void)i; return MD_INPUT_OUTPUT_REQUIRED; }
static int sm_memory(const MdCustomOp* op, size_t i) { (void)op; (void)i; return MD_MEM_DEFAULT; }

MdCustomOp md_sparse_mlp_op = {
    MD_ORT_API_VERSION, sm_create, sm_name, sm_provider, sm_input_type, sm_inputs, sm_float, sm_outputs,
    sm_compute, sm_destroy, sm_required, sm_required, sm_memory,
};
