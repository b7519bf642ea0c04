/* MatMulInt4 as an ONNX Runtime CPU kernel, for mlpdeploy's custom-op library.
 *
 * Y[m, n] = sum_k A[m, k] * (q[n, k] - z[n, k/32]) * s[n, k/32] with the weights in
 * com.microsoft MatMulNBits' 4-bit, block-32 layout (B uint8 [N, K/32, 16], two codes a byte,
 * low nibble first; scales float [N * K/32]; optional zero points uint8 [N * ceil(K/32 / 2)],
 * low nibble first, default 8), and A quantized as MatMulNBits does at accuracy level 4: per
 * row and block of 32, scale_a = max|a| / 127, a_q = round-half-even(a * (127 / max|a|)).
 *
 * Why: ONNX Runtime 1.32's MatMulNBits kernel costs about as much per row at M = 8 or 16 as at
 * M = 1 (K 576 x N 3072: 29 / 152 / 295 us at M = 1 / 8 / 16, 2 threads), so a batched decode
 * step or a speculative verify pass pays nearly M one-token steps for the weights. Here the
 * codes of one block of 16 columns are unpacked once into registers and used for up to 8 rows.
 *
 * Arithmetic, the same in the AVX-512 VNNI path and the portable one, and the same for a row
 * whatever else is in the batch (so a batched decode step gives each row its solo result):
 *   per block j: d = sum_k a_q * q (int32, exact); t = float(d) - z * float(sum_k a_q) (exact:
 *   integers below 2^24); y = fma(t, scale_a * scale_b, y), j in increasing order.
 *
 * The codes are repacked on first use (per node; re-done if the B input moves) into tiles of 16
 * columns: for each block, 4 x 64 bytes whose low / high nibbles are k = 4p..4p+3 / 16+4p..
 * 16+4p+3 of the 16 columns, then the 16 scales (and zero points as floats). Columns past N are
 * zero. Rows go to one thread unless the call is large (then md_parallel_for over tiles).
 * Inputs it cannot take (another blob size, K not matching B) give a NaN output. */
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "../ort/ort_abi.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
#include <immintrin.h>
#define MI_VNNI 1
#else
#define MI_VNNI 0
#endif

enum { MI_BLOCK = 32, MI_TILE = 16, MI_TILE_BYTES = MI_BLOCK * MI_TILE / 2, MI_ROWS = 8 };
enum { MD_TENSOR_UINT8 = 2, MD_INPUT_OUTPUT_OPTIONAL = 1 };
/* Below this many (row, block, tile) units (~3 ns each) a call stays on the calling thread. */
#ifndef MI_SERIAL_WORK
#define MI_SERIAL_WORK 512
#endif

typedef struct {
  pthread_mutex_t lock;
  const void* source;  /* the B data the packed copy was made from */
  const void* scales_source;
  const void* zeros_source;
  int64_t n, blocks;
  int has_zeros;
  unsigned char* packed; /* [tiles][blocks]{codes 256 B, scales 16 float, zero points 16 float if has_zeros} */
  size_t stride;         /* bytes of one (tile, block) record */
} MiKernel;

typedef struct {
  const MiKernel* kernel;
  const int8_t* a_codes; /* [m][blocks][32] */
  const float* a_scales; /* [m][blocks] */
  const float* a_sums;   /* [m][blocks] */
  float* y;
  int64_t m, n;
} MiWork;

static size_t mi_stride(int has_zeros) { return MI_TILE_BYTES + MI_TILE * sizeof(float) * (has_zeros ? 2 : 1); }

/* The 4-bit zero point of (col, block): packed two a byte, low nibble first; 8 without the input. */
static int mi_zero(const unsigned char* z, int64_t blocks, int64_t col, int64_t block) {
  if (z == NULL) return 8;
  const unsigned char byte = z[col * ((blocks + 1) / 2) + block / 2];
  return block % 2 ? byte >> 4 : byte & 15;
}

/* (Re)pack B, scales and zero points into tiles; returns 0 on success. */
static int mi_pack(MiKernel* kernel, const unsigned char* b, const float* scales, const unsigned char* zeros, int64_t n,
                   int64_t blocks) {
  const int has_zeros = zeros != NULL;
  const size_t stride = mi_stride(has_zeros);
  const int64_t tiles = (n + MI_TILE - 1) / MI_TILE;
  unsigned char* packed = aligned_alloc(64, (size_t)(tiles * blocks) * stride);
  if (packed == NULL) return 1;
  memset(packed, 0, (size_t)(tiles * blocks) * stride);
  for (int64_t t = 0; t < tiles; t++)
    for (int64_t j = 0; j < blocks; j++) {
      unsigned char* record = packed + (size_t)(t * blocks + j) * stride;
      float* s = (float*)(record + MI_TILE_BYTES);
      for (int c = 0; c < MI_TILE && t * MI_TILE + c < n; c++) {
        const int64_t col = t * MI_TILE + c;
        const unsigned char* src = b + (col * blocks + j) * (MI_BLOCK / 2); /* code k: byte k / 2, low nibble first */
        unsigned char code[MI_BLOCK];
        for (int i = 0; i < MI_BLOCK / 2; i++) {
          code[2 * i] = src[i] & 15;
          code[2 * i + 1] = src[i] >> 4;
        }
        for (int p = 0; p < 4; p++)
          for (int i = 0; i < 4; i++) record[p * 64 + c * 4 + i] = (unsigned char)(code[4 * p + i] | code[16 + 4 * p + i] << 4);
        s[c] = scales[col * blocks + j];
        if (has_zeros) s[MI_TILE + c] = (float)mi_zero(zeros, blocks, col, j);
      }
    }
  free(kernel->packed);
  kernel->packed = packed;
  kernel->stride = stride;
  kernel->has_zeros = has_zeros;
  kernel->n = n;
  kernel->blocks = blocks;
  return 0;
}

/* Quantize row `a` (k values) into blocks of 32 int8 codes, their scales and their code sums.
 * Rounding is the current mode's (round half to even by default) in both paths. */
static void mi_quantize_row(const float* a, int64_t k, int64_t blocks, int8_t* codes, float* scales, float* sums) {
  for (int64_t j = 0; j < blocks; j++) {
    float v[MI_BLOCK] = {0};
    const int64_t n = k - j * MI_BLOCK < MI_BLOCK ? k - j * MI_BLOCK : MI_BLOCK;
    memcpy(v, a + j * MI_BLOCK, (size_t)n * sizeof(float));
#if MI_VNNI
    const __m512 v0 = _mm512_loadu_ps(v), v1 = _mm512_loadu_ps(v + 16);
    const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
    const __m512 inverse = _mm512_set1_ps(amax > 0.0f ? 127.0f / amax : 0.0f);
    const __m512i q0 = _mm512_cvtps_epi32(_mm512_mul_ps(v0, inverse)), q1 = _mm512_cvtps_epi32(_mm512_mul_ps(v1, inverse));
    _mm_storeu_si128((__m128i*)(codes + j * MI_BLOCK), _mm512_cvtepi32_epi8(q0));
    _mm_storeu_si128((__m128i*)(codes + j * MI_BLOCK + 16), _mm512_cvtepi32_epi8(q1));
    const int sum = _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
#else
    float amax = 0.0f;
    for (int i = 0; i < MI_BLOCK; i++) amax = fmaxf(amax, fabsf(v[i]));
    const float inverse = amax > 0.0f ? 127.0f / amax : 0.0f;
    int sum = 0;
    for (int i = 0; i < MI_BLOCK; i++) {
      const int q = (int)nearbyintf(v[i] * inverse);
      codes[j * MI_BLOCK + i] = (int8_t)q;
      sum += q;
    }
#endif
    scales[j] = amax / 127.0f;
    sums[j] = (float)sum;
  }
}

#if MI_VNNI
static inline int32_t mi_load32(const int8_t* p) {
  int32_t v;
  memcpy(&v, p, sizeof v);
  return v;
}

/* Rows [r0, r0 + R) of one tile: the codes of each block are unpacked once for all R rows. */
static inline __attribute__((always_inline)) void mi_tile_rows(const MiWork* w, int64_t tile, int64_t r0, int R) {
  const MiKernel* kernel = w->kernel;
  const int64_t blocks = kernel->blocks;
  const __m512i low = _mm512_set1_epi8(15);
  __m512 y[MI_ROWS];
  for (int r = 0; r < R; r++) y[r] = _mm512_setzero_ps();
  const unsigned char* record = kernel->packed + (size_t)(tile * blocks) * kernel->stride;
  for (int64_t j = 0; j < blocks; j++, record += kernel->stride) {
    __m512i q[8];
    for (int p = 0; p < 4; p++) {
      const __m512i v = _mm512_load_si512((const void*)(record + p * 64));
      q[p] = _mm512_and_si512(v, low);
      q[p + 4] = _mm512_and_si512(_mm512_srli_epi16(v, 4), low);
    }
    const __m512 scale_b = _mm512_load_ps((const float*)(record + MI_TILE_BYTES));
    const __m512 zero_b = kernel->has_zeros ? _mm512_load_ps((const float*)(record + MI_TILE_BYTES) + MI_TILE) : _mm512_set1_ps(8.0f);
    for (int r = 0; r < R; r++) {
      const int64_t at = (r0 + r) * blocks + j;
      const int8_t* a = w->a_codes + at * MI_BLOCK;
      /* two accumulators: half the dependency chain (integer sums: the result is the same) */
      __m512i d0 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), q[0], _mm512_set1_epi32(mi_load32(a)));
      __m512i d1 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), q[1], _mm512_set1_epi32(mi_load32(a + 4)));
      for (int g = 2; g < 8; g += 2) {
        d0 = _mm512_dpbusd_epi32(d0, q[g], _mm512_set1_epi32(mi_load32(a + 4 * g)));
        d1 = _mm512_dpbusd_epi32(d1, q[g + 1], _mm512_set1_epi32(mi_load32(a + 4 * g + 4)));
      }
      const __m512 t = _mm512_fnmadd_ps(zero_b, _mm512_set1_ps(w->a_sums[at]), _mm512_cvtepi32_ps(_mm512_add_epi32(d0, d1)));
      y[r] = _mm512_fmadd_ps(t, _mm512_mul_ps(scale_b, _mm512_set1_ps(w->a_scales[at])), y[r]);
    }
  }
  const int64_t cols = w->n - tile * MI_TILE < MI_TILE ? w->n - tile * MI_TILE : MI_TILE;
  const __mmask16 mask = (__mmask16)((1u << cols) - 1u);
  for (int r = 0; r < R; r++) _mm512_mask_storeu_ps(w->y + (r0 + r) * w->n + tile * MI_TILE, mask, y[r]);
}
#else
/* The same arithmetic, one column at a time (no AVX-512 VNNI at build time). */
static void mi_tile_rows(const MiWork* w, int64_t tile, int64_t r0, int R) {
  const MiKernel* kernel = w->kernel;
  const int64_t blocks = kernel->blocks;
  for (int r = 0; r < R; r++) {
    const int64_t row = r0 + r;
    for (int c = 0; c < MI_TILE && tile * MI_TILE + c < w->n; c++) {
      float y = 0.0f;
      for (int64_t j = 0; j < blocks; j++) {
        const unsigned char* record = kernel->packed + (size_t)(tile * blocks + j) * kernel->stride;
        const float* s = (const float*)(record + MI_TILE_BYTES);
        const int8_t* a = w->a_codes + (row * blocks + j) * MI_BLOCK;
        int32_t d = 0;
        for (int p = 0; p < 4; p++)
          for (int i = 0; i < 4; i++) {
            const unsigned char byte = record[p * 64 + c * 4 + i];
            d += (byte & 15) * a[4 * p + i] + (byte >> 4) * a[16 + 4 * p + i];
          }
        const float zero = kernel->has_zeros ? s[MI_TILE + c] : 8.0f;
        const float t = fmaf(-zero, w->a_sums[row * blocks + j], (float)d);
        y = fmaf(t, s[c] * w->a_scales[row * blocks + j], y);
      }
      w->y[row * w->n + tile * MI_TILE + c] = y;
    }
  }
}
#endif

static void mi_tiles(void* arg, int64_t t0, int64_t t1) {
  const MiWork* w = (const MiWork*)arg;
  for (int64_t t = t0; t < t1; t++) {
    int64_t r = 0;
    for (; r + 8 <= w->m; r += 8) mi_tile_rows(w, t, r, 8);
    if (r + 4 <= w->m) { mi_tile_rows(w, t, r, 4); r += 4; }
    if (r + 2 <= w->m) { mi_tile_rows(w, t, r, 2); r += 2; }
    if (r < w->m) mi_tile_rows(w, t, r, 1);
  }
}

static void* mi_create(const MdCustomOp* op, const MdOrtApi* api, const OrtKernelInfo* info) {
  (void)op; (void)api; (void)info;
  MiKernel* kernel = calloc(1, sizeof *kernel);
  if (kernel) pthread_mutex_init(&kernel->lock, NULL);
  return kernel;
}

static void mi_destroy(void* k) {
  MiKernel* kernel = (MiKernel*)k;
  if (kernel == NULL) return;
  pthread_mutex_destroy(&kernel->lock);
  free(kernel->packed);
  free(kernel);
}

static void mi_fill_nan(float* y, int64_t n) {
  for (int64_t i = 0; i < n; i++) y[i] = NAN;
}

static void mi_compute(void* k, OrtKernelContext* context) {
  MiKernel* kernel = (MiKernel*)k;
  MdTensor a, b, scales, zeros;
  if (md_input(context, 0, &a) || md_input(context, 1, &b) || md_input(context, 2, &scales)) return;
  const int has_zeros = md_input(context, 3, &zeros) == 0;
  int64_t out_dims[8], m = 1;
  for (size_t i = 0; i < a.rank; i++) out_dims[i] = a.dims[i];
  for (size_t i = 0; i + 1 < a.rank; i++) m *= a.dims[i];
  const int64_t n = b.rank == 3 ? b.dims[0] : 0, blocks = b.rank == 3 ? b.dims[1] : 0;
  const int64_t kdim = a.rank ? a.dims[a.rank - 1] : 0;
  if (a.rank) out_dims[a.rank - 1] = n;
  float* y = (float*)md_output(context, 0, out_dims, a.rank);
  if (y == NULL) return;
  int64_t scale_count = 1;
  for (size_t i = 0; i < scales.rank; i++) scale_count *= scales.dims[i];
  const int ok = a.rank >= 1 && a.type == MD_TENSOR_FLOAT && b.type == MD_TENSOR_UINT8 && b.dims[2] == MI_BLOCK / 2 &&
                 n > 0 && blocks > 0 && kdim > (blocks - 1) * MI_BLOCK && kdim <= blocks * MI_BLOCK &&
                 scales.type == MD_TENSOR_FLOAT && scale_count == n * blocks &&
                 (!has_zeros || (zeros.type == MD_TENSOR_UINT8 && zeros.rank >= 1));
  if (!ok) {
    mi_fill_nan(y, m * n);
    return;
  }
  if (m == 0) return;
  pthread_mutex_lock(&kernel->lock);
  int failed = 0;
  if (kernel->packed == NULL || kernel->source != b.data || kernel->scales_source != scales.data ||
      kernel->zeros_source != (has_zeros ? zeros.data : NULL) || kernel->n != n || kernel->blocks != blocks) {
    failed = mi_pack(kernel, b.data, scales.data, has_zeros ? zeros.data : NULL, n, blocks);
    kernel->source = failed ? NULL : b.data;
    kernel->scales_source = scales.data;
    kernel->zeros_source = has_zeros ? zeros.data : NULL;
  }
  pthread_mutex_unlock(&kernel->lock);
  int8_t* codes = malloc((size_t)(m * blocks * MI_BLOCK));
  float* a_scales = malloc((size_t)(m * blocks) * sizeof(float));
  float* a_sums = malloc((size_t)(m * blocks) * sizeof(float));
  if (failed || codes == NULL || a_scales == NULL || a_sums == NULL) {
    mi_fill_nan(y, m * n);
  } else {
    for (int64_t r = 0; r < m; r++)
      mi_quantize_row((const float*)a.data + r * kdim, kdim, blocks, codes + r * blocks * MI_BLOCK, a_scales + r * blocks,
                      a_sums + r * blocks);
    MiWork work = {kernel, codes, a_scales, a_sums, y, m, n};
    const int64_t tiles = (n + MI_TILE - 1) / MI_TILE;
    if (m * blocks * tiles < MI_SERIAL_WORK) mi_tiles(&work, 0, tiles);
    else md_kernel_parallel_for(context, tiles, mi_tiles, &work);
  }
  free(codes);
  free(a_scales);
  free(a_sums);
}

static const char* mi_name(const MdCustomOp* op) { (void)op; return "MatMulInt4"; }
static const char* mi_provider(const MdCustomOp* op) { (void)op; return NULL; /* CPU */ }
static int mi_input_type(const MdCustomOp* op, size_t i) { (void)op; return i == 1 || i == 3 ? MD_TENSOR_UINT8 : MD_TENSOR_FLOAT; }
static int mi_float(const MdCustomOp* op, size_t i) { (void)op; (void)i; return MD_TENSOR_FLOAT; }
static size_t mi_inputs(const MdCustomOp* op) { (void)op; return 4; }
static size_t mi_outputs(const MdCustomOp* op) { (void)op; return 1; }
static int mi_input_kind(const MdCustomOp* op, size_t i) { (void)op; return i == 3 ? MD_INPUT_OUTPUT_OPTIONAL : MD_INPUT_OUTPUT_REQUIRED; }
static int mi_required(const MdCustomOp* op, size_t i) { (void)op; (void)i; return MD_INPUT_OUTPUT_REQUIRED; }
static int mi_memory(const MdCustomOp* op, size_t i) { (void)op; (void)i; return MD_MEM_DEFAULT; }

MdCustomOp md_matmul_int4_op = {
    MD_ORT_API_VERSION, mi_create, mi_name, mi_provider, mi_input_type, mi_inputs, mi_float, mi_outputs,
    mi_compute, mi_destroy, mi_input_kind, mi_required, mi_memory,
};
