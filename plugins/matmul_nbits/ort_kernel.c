/* MatMulInt4 and MatMulInt8 as ONNX Runtime CPU kernels, for mlpdeploy's custom-op library.
 *
 * Y[m, n] = sum_k A[m, k] * (q[n, k] - z[n, k/32]) * s[n, k/32] with the weights in
 * com.microsoft MatMulNBits' layout for `bits` = 4 or 8, block 32: B uint8 [N, K/32, 32 * bits / 8]
 * (4-bit: two codes a byte, low nibble first); scales float [N * K/32]; optional zero points uint8,
 * 4-bit: [N * ceil(K/32 / 2)] two a byte, low nibble first, default 8; 8-bit: [N * K/32], default
 * 128. A is quantized as MatMulNBits does at accuracy level 4: per row and block of 32,
 * scale_a = max|a| / 127, a_q = round-half-even(a * (127 / max|a|)).
 *
 * Why: ONNX Runtime 1.32's MatMulNBits kernel costs about as much per row at M = 8 or 16 as at
 * M = 1 (K 576 x N 3072, 4-bit: 29 / 152 / 295 us at M = 1 / 8 / 16, 2 threads), so a batched
 * decode step or a speculative verify pass pays nearly M one-token steps for the weights. Here
 * the codes of one block of 16 columns are loaded (and unpacked) once and used for up to 8 rows.
 *
 * Arithmetic, the same in the AVX-512 VNNI path and the portable one, and the same for a row
 * whatever else is in the batch (so a batched decode step gives each row its solo result):
 *   per block j: d = sum_k a_q * q (int32, exact); t = float(d) - z * float(sum_k a_q) (exact:
 *   integers below 2^24); y = fma(t, scale_a * scale_b, y), j in increasing order.
 *
 * The codes are repacked on first use (per node; re-done if an input moves) into tiles of 16
 * columns: per block, the codes (8 x 64 bytes, each 16 lanes of 4 consecutive k: k = 4g..4g+3
 * in vector g; 4-bit: 4 x 64 bytes, vector g in the low nibbles of p = g and the high ones of
 * p = g - 4), then the 16 scales (and zero points as floats). Columns past N are zero. Tiles go
 * to ONNX Runtime's intra-op threads unless the call is small. Inputs it cannot take (another
 * blob size, K not matching B) give a NaN output. */
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

enum { MI_BLOCK = 32, MI_TILE = 16, MI_ROWS = 8 };
enum { MD_TENSOR_UINT8 = 2, MD_INPUT_OUTPUT_OPTIONAL = 1 };
/* Below this many (row, block, tile) units (~3 ns each) a call stays on the calling thread. */
#ifndef MI_SERIAL_WORK
#define MI_SERIAL_WORK 512
#endif

typedef struct {
  pthread_mutex_t lock;
  int bits;            /* 4 or 8: which op this kernel is */
  const void* source;  /* the B data the packed copy was made from */
  const void* scales_source;
  const void* zeros_source;
  int64_t n, blocks;
  int has_zeros;
  unsigned char* packed; /* [tiles][blocks]{codes, scales 16 float, zero points 16 float if has_zeros} */
  size_t codes_bytes;    /* of one (tile, block) record: 16 columns x 32 codes x bits / 8 */
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

/* The zero point of (col, block) from the zero-point input: 4-bit two a byte (low nibble first), 8-bit one a byte. */
static int mi_zero(const unsigned char* z, int bits, int64_t blocks, int64_t col, int64_t block) {
  if (bits == 8) return z[col * blocks + block];
  const unsigned char byte = z[col * ((blocks + 1) / 2) + block / 2];
  return block % 2 ? byte >> 4 : byte & 15;
}

/* The 32 codes of (col, block) from B in MatMulNBits' layout. */
static void mi_codes(const unsigned char* b, int bits, int64_t blocks, int64_t col, int64_t block, unsigned char code[MI_BLOCK]) {
  const unsigned char* src = b + (col * blocks + block) * (MI_BLOCK * bits / 8);
  if (bits == 8) {
    memcpy(code, src, MI_BLOCK);
    return;
  }
  for (int i = 0; i < MI_BLOCK / 2; i++) {
    code[2 * i] = src[i] & 15;
    code[2 * i + 1] = src[i] >> 4;
  }
}

/* (Re)pack B, scales and zero points into tiles; returns 0 on success. */
static int mi_pack(MiKernel* kernel, const unsigned char* b, const float* scales, const unsigned char* zeros, int64_t n,
                   int64_t blocks) {
  const int has_zeros = zeros != NULL, bits = kernel->bits;
  const size_t codes_bytes = MI_TILE * MI_BLOCK * bits / 8;
  const size_t stride = codes_bytes + MI_TILE * sizeof(float) * (has_zeros ? 2 : 1);
  const int64_t tiles = (n + MI_TILE - 1) / MI_TILE;
  unsigned char* packed = aligned_alloc(64, (size_t)(tiles * blocks) * stride);
  if (packed == NULL) return 1;
  memset(packed, 0, (size_t)(tiles * blocks) * stride);
  for (int64_t t = 0; t < tiles; t++)
    for (int64_t j = 0; j < blocks; j++) {
      unsigned char* record = packed + (size_t)(t * blocks + j) * stride;
      float* s = (float*)(record + codes_bytes);
      for (int c = 0; c < MI_TILE && t * MI_TILE + c < n; c++) {
        const int64_t col = t * MI_TILE + c;
        unsigned char code[MI_BLOCK];
        mi_codes(b, bits, blocks, col, j, code);
        for (int g = 0; g < 8; g++)
          for (int i = 0; i < 4; i++) {
            if (bits == 8) record[g * 64 + c * 4 + i] = code[4 * g + i];
            else if (g < 4) record[g * 64 + c * 4 + i] |= code[4 * g + i];
            else record[(g - 4) * 64 + c * 4 + i] |= (unsigned char)(code[4 * g + i] << 4);
          }
        s[c] = scales[col * blocks + j];
        if (has_zeros) s[MI_TILE + c] = (float)mi_zero(zeros, bits, blocks, col, j);
      }
    }
  free(kernel->packed);
  kernel->packed = packed;
  kernel->codes_bytes = codes_bytes;
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

/* Rows [r0, r0 + R) of one tile: the codes of each block are loaded (unpacked) once for all R rows. */
static inline __attribute__((always_inline)) void mi_tile_rows(const MiWork* w, int64_t tile, int64_t r0, int R, int bits) {
  const MiKernel* kernel = w->kernel;
  const int64_t blocks = kernel->blocks;
  const __m512i low = _mm512_set1_epi8(15);
  __m512 y[MI_ROWS];
  for (int r = 0; r < R; r++) y[r] = _mm512_setzero_ps();
  const unsigned char* record = kernel->packed + (size_t)(tile * blocks) * kernel->stride;
  const __m512 default_zero = _mm512_set1_ps((float)(1 << (bits - 1)));
  for (int64_t j = 0; j < blocks; j++, record += kernel->stride) {
    __m512i q[8];
    if (bits == 8) {
      for (int g = 0; g < 8; g++) q[g] = _mm512_load_si512((const void*)(record + g * 64));
    } else {
      for (int p = 0; p < 4; p++) {
        const __m512i v = _mm512_load_si512((const void*)(record + p * 64));
        q[p] = _mm512_and_si512(v, low);
        q[p + 4] = _mm512_and_si512(_mm512_srli_epi16(v, 4), low);
      }
    }
    const float* s = (const float*)(record + kernel->codes_bytes);
    const __m512 scale_b = _mm512_load_ps(s);
    const __m512 zero_b = kernel->has_zeros ? _mm512_load_ps(s + MI_TILE) : default_zero;
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
static void mi_tile_rows(const MiWork* w, int64_t tile, int64_t r0, int R, int bits) {
  const MiKernel* kernel = w->kernel;
  const int64_t blocks = kernel->blocks;
  for (int r = 0; r < R; r++) {
    const int64_t row = r0 + r;
    for (int c = 0; c < MI_TILE && tile * MI_TILE + c < w->n; c++) {
      float y = 0.0f;
      for (int64_t j = 0; j < blocks; j++) {
        const unsigned char* record = kernel->packed + (size_t)(tile * blocks + j) * kernel->stride;
        const float* s = (const float*)(record + kernel->codes_bytes);
        const int8_t* a = w->a_codes + (row * blocks + j) * MI_BLOCK;
        int32_t d = 0;
        for (int g = 0; g < 8; g++)
          for (int i = 0; i < 4; i++) {
            const unsigned char code = bits == 8 ? record[g * 64 + c * 4 + i]
                                       : g < 4   ? record[g * 64 + c * 4 + i] & 15
                                                 : record[(g - 4) * 64 + c * 4 + i] >> 4;
            d += code * a[4 * g + i];
          }
        const float zero = kernel->has_zeros ? s[MI_TILE + c] : (float)(1 << (bits - 1));
        const float t = fmaf(-zero, w->a_sums[row * blocks + j], (float)d);
        y = fmaf(t, s[c] * w->a_scales[row * blocks + j], y);
      }
      w->y[row * w->n + tile * MI_TILE + c] = y;
    }
  }
}
#endif

/* Every row of tiles [t0, t1), in groups of 8, 4, 2 and 1 rows (each a specialized loop). */
static inline __attribute__((always_inline)) void mi_tiles_bits(const MiWork* w, int64_t t0, int64_t t1, int bits) {
  for (int64_t t = t0; t < t1; t++) {
    int64_t r = 0;
    for (; r + 8 <= w->m; r += 8) mi_tile_rows(w, t, r, 8, bits);
    if (r + 4 <= w->m) { mi_tile_rows(w, t, r, 4, bits); r += 4; }
    if (r + 2 <= w->m) { mi_tile_rows(w, t, r, 2, bits); r += 2; }
    if (r < w->m) mi_tile_rows(w, t, r, 1, bits);
  }
}

static void mi_tiles4(void* arg, int64_t t0, int64_t t1) { mi_tiles_bits((const MiWork*)arg, t0, t1, 4); }
static void mi_tiles8(void* arg, int64_t t0, int64_t t1) { mi_tiles_bits((const MiWork*)arg, t0, t1, 8); }

static void* mi_create(int bits) {
  MiKernel* kernel = calloc(1, sizeof *kernel);
  if (kernel) {
    pthread_mutex_init(&kernel->lock, NULL);
    kernel->bits = bits;
  }
  return kernel;
}

static void* mi_create4(const MdCustomOp* op, const MdOrtApi* api, const OrtKernelInfo* info) {
  (void)op; (void)api; (void)info;
  return mi_create(4);
}

static void* mi_create8(const MdCustomOp* op, const MdOrtApi* api, const OrtKernelInfo* info) {
  (void)op; (void)api; (void)info;
  return mi_create(8);
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
  int64_t scale_count = 1, zero_count = 1;
  for (size_t i = 0; i < scales.rank; i++) scale_count *= scales.dims[i];
  for (size_t i = 0; has_zeros && i < zeros.rank; i++) zero_count *= zeros.dims[i];
  const int64_t zeros_wanted = kernel->bits == 8 ? n * blocks : n * ((blocks + 1) / 2);
  const int ok = a.rank >= 1 && a.type == MD_TENSOR_FLOAT && b.type == MD_TENSOR_UINT8 && b.dims[2] == MI_BLOCK * kernel->bits / 8 &&
                 n > 0 && blocks > 0 && kdim > (blocks - 1) * MI_BLOCK && kdim <= blocks * MI_BLOCK &&
                 scales.type == MD_TENSOR_FLOAT && scale_count == n * blocks &&
                 (!has_zeros || (zeros.type == MD_TENSOR_UINT8 && zero_count == zeros_wanted));
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
    void (*run)(void*, int64_t, int64_t) = kernel->bits == 8 ? mi_tiles8 : mi_tiles4;
    if (m * blocks * tiles < MI_SERIAL_WORK) run(&work, 0, tiles);
    else md_kernel_parallel_for(context, tiles, run, &work);
  }
  free(codes);
  free(a_scales);
  free(a_sums);
}

static const char* mi_name4(const MdCustomOp* op) { (void)op; return "MatMulInt4"; }
static const char* mi_name8(const MdCustomOp* op) { (void)op; return "MatMulInt8"; }
static const char* mi_provider(const MdCustomOp* op) { (void)op; return NULL; /* CPU */ }
static int mi_input_type(const MdCustomOp* op, size_t i) { (void)op; return i == 1 || i == 3 ? MD_TENSOR_UINT8 : MD_TENSOR_FLOAT; }
static int mi_float(const MdCustomOp* op, size_t i) { (void)op; (void)i; return MD_TENSOR_FLOAT; }
static size_t mi_inputs(const MdCustomOp* op) { (void)op; return 4; }
static size_t mi_outputs(const MdCustomOp* op) { (void)op; return 1; }
static int mi_input_kind(const MdCustomOp* op, size_t i) { (void)op; return i == 3 ? MD_INPUT_OUTPUT_OPTIONAL : MD_INPUT_OUTPUT_REQUIRED; }
static int mi_required(const MdCustomOp* op, size_t i) { (void)op; (void)i; return MD_INPUT_OUTPUT_REQUIRED; }
static int mi_memory(const MdCustomOp* op, size_t i) { (void)op; (void)i; return MD_MEM_DEFAULT; }

MdCustomOp md_matmul_int4_op = {
    MD_ORT_API_VERSION, mi_create4, mi_name4, mi_provider, mi_input_type, mi_inputs, mi_float, mi_outputs,
    mi_compute, mi_destroy, mi_input_kind, mi_required, mi_memory,
};

MdCustomOp md_matmul_int8_op = {
    MD_ORT_API_VERSION, mi_create8, mi_name8, mi_provider, mi_input_type, mi_inputs, mi_float, mi_outputs,
    mi_compute, mi_destroy, mi_input_kind, mi_required, mi_memory,
};
