/* CachedAttention: the subset of com.microsoft GroupQueryAttention that mlpdeploy's cached decoders
 * use, as an ONNX Runtime CPU kernel for mlpdeploy's custom-op library (float32).
 *
 * Inputs: 0 packed QKV [B, S, (H + 2 KV) D]; 1 past_key, 2 past_value [B, KV, C, D]; 3 seqlens_k
 * int32 [B] (L_b - 1, L_b = the row's length after the step); 4 total_sequence_length int32 scalar
 * (T); 5 cos_cache, 6 sin_cache [P, D/2] (rotate-half); 7 position_ids int64 [B, S]; 8 optional
 * attention_bias [B or 1, H or 1, S, T]; 9 optional query_seqlens int32 [B] (Q_b valid rows of the
 * chunk, default min(S, L_b)); 10 optional token_rows int32 [T'] (absent or empty: the normal mode
 * below; else the ragged mode). Attributes num_heads H, kv_num_heads KV, scale (0 or absent:
 * 1/sqrt(D)). Outputs: attention [B, S, H D]; present_key, present_value [B, KV, max(C, T), D].
 *
 * Per row b: P_b = L_b - Q_b tokens were cached; the chunk's rows s < Q_b are rotated at
 * position_ids[b, s] (k; q too) and written at columns P_b + s of the row's present K / V (in place
 * when present is the past buffer, as with IO binding; else present is zeroed and the P_b cached
 * columns copied first, as ONNX Runtime does). Query head h (kv head h / (H / KV)) at row s attends
 * columns 0 .. P_b + s of its row: score = scale * q.k + bias[b, h, s, c], softmax, weighted V. As
 * in ONNX Runtime 1.32's kernel (measured), a bias of exactly -FLT_MAX (or -inf) masks its column
 * out, and a query whose columns are all masked gets 0 (a bias of -1e30 is a finite score: such a
 * row attends uniformly). Rows s >= Q_b of the output are 0.
 *
 * Ragged mode (token_rows of T' >= 1 elements: one call attends tokens of many cache rows, e.g. a
 * prefill chunk and the other sequences' decode tokens): query [1, T', ·], past [R, KV, C, D] (any
 * R), position_ids [1, T'] (token t's position, the column it is written to); seqlens_k,
 * total_sequence_length, query_seqlens and attention_bias are ignored (a ragged row holds no padding; mlpdeploy wires
 * token_rows only where the bias is the plain causal + padding mask, which keeps every column a row attends). Token t
 * belongs to row token_rows[t]; a segment is a maximal run of tokens of one row at consecutive
 * positions p0 .. p0 + n - 1, and each row is in one segment at most (0 <= row < R, p0 >= 0,
 * p0 + n - 1 < C and < the tables' P rows). A segment computes, bit for bit, what the normal mode
 * does for its row alone (B = 1, P = p0, Q = n), blocked from its first token. Outputs: attention
 * [1, T', H D]; present [R, KV, C, D] (in place when it is the past's buffer, else the whole past
 * copied first; other columns untouched).
 *
 * Why: ONNX Runtime 1.32's GroupQueryAttention costs ~24 us per SmolLM2 layer for one decode row
 * and ~13x that for 16 rows (its per-head GEMM calls, transposes and temporaries), for ~0.2 MFLOP
 * a row. Here one work item is a (row or segment, kv head[, block of 32 of its query rows from its
 * first]) on ONNX Runtime's intra-op pool, and the H / KV query heads sharing a kv head are computed
 * together, so each K / V column is loaded once for them.
 *
 * Arithmetic, written once on 16-lane vectors (`vf`): AVX-512 registers where __AVX512F__, else
 * arrays of 16 floats with the same operations in the same order, so both builds give the same
 * bits. A score is a chain of FMAs over the D/16 lane groups, then a fixed pairwise tree over its
 * 16 lanes (lane l + l + 8, then + 4, + 2, + 1; 16 columns reduced at once). Softmax uses a
 * polynomial exp with range reduction (ca_exp). The weighted sum runs over the columns in order,
 * one FMA a column, and is scaled by 1 / sum at the end. A query's result depends only on its own
 * row's inputs: not on the other rows, the blocking or the thread count. Inputs the kernel does not
 * take (shapes, lengths, positions out of range) give a NaN output. */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../ort/ort_abi.h"

enum { CA_TENSOR_INT32 = 6, CA_TENSOR_INT64 = 7, CA_OPTIONAL = 1 };
enum {
  CA_LANES = 16,
  CA_MQ = 6,        /* queries computed together: their q (and accumulators) stay in registers */
  CA_MAX_ND = 16,   /* D / 16 at most: head size up to 256 */
  CA_POSITIONS = 32 /* query rows of one work item (prefill); one item per (row, kv head) below that */
};
/* Below this many multiply-adds a call stays on the calling thread (a pool dispatch costs a few us). */
#ifndef CA_SERIAL_WORK
#define CA_SERIAL_WORK 40000
#endif

/* ---- 16-lane vectors: the same operations, and so the same bits, in both builds ---------------- */
#if defined(__AVX512F__)
#include <immintrin.h>
typedef __m512 vf;
static inline vf vf_zero(void) { return _mm512_setzero_ps(); }
static inline vf vf_set1(float x) { return _mm512_set1_ps(x); }
static inline vf vf_load(const float* p) { return _mm512_loadu_ps(p); }
static inline vf vf_loadn(const float* p, int n, float fill) { return _mm512_mask_loadu_ps(_mm512_set1_ps(fill), (__mmask16)((1u << n) - 1u), p); }
static inline void vf_store(float* p, vf a) { _mm512_storeu_ps(p, a); }
static inline vf vf_add(vf a, vf b) { return _mm512_add_ps(a, b); }
static inline vf vf_sub(vf a, vf b) { return _mm512_sub_ps(a, b); }
static inline vf vf_mul(vf a, vf b) { return _mm512_mul_ps(a, b); }
static inline vf vf_fma(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }
static inline vf vf_max(vf a, vf b) { return _mm512_max_ps(a, b); } /* a > b ? a : b */
static inline vf vf_min(vf a, vf b) { return _mm512_min_ps(a, b); } /* a < b ? a : b */
static inline vf vf_round(vf a) { return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
/* 2^n for integral n in [-126, 127] */
static inline vf vf_pow2(vf n) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23));
}
/* x < lo ? 0 : y */
static inline vf vf_zero_below(vf x, float lo, vf y) {
  return _mm512_mask_mov_ps(y, _mm512_cmp_ps_mask(x, _mm512_set1_ps(lo), _CMP_LT_OQ), _mm512_setzero_ps());
}
/* x <= at ? fill : y */
static inline vf vf_fill_at_most(vf x, float at, float fill, vf y) {
  return _mm512_mask_mov_ps(y, _mm512_cmp_ps_mask(x, _mm512_set1_ps(at), _CMP_LE_OQ), _mm512_set1_ps(fill));
}
/* lane l: bit k of l clear ? a[l] + a[l + k] : b[l - k] + b[l] */
static inline vf vf_pair_sum(vf a, vf b, int k) {
  static const int32_t low[4][16] = {
      {0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23}, {0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27},
      {0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29}, {0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30}};
  static const int32_t high[4][16] = {
      {8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31}, {4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31},
      {2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31}, {1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31}};
  const int i = k == 8 ? 0 : k == 4 ? 1 : k == 2 ? 2 : 3;
  return _mm512_add_ps(_mm512_permutex2var_ps(a, _mm512_loadu_si512((const void*)low[i]), b),
                       _mm512_permutex2var_ps(a, _mm512_loadu_si512((const void*)high[i]), b));
}
#else
typedef struct {
  float v[CA_LANES];
} vf;
#define VF_EACH(expr)                                   \
  vf r;                                                 \
  for (int l = 0; l < CA_LANES; l++) r.v[l] = (expr);   \
  return r
static inline vf vf_zero(void) { VF_EACH(0.0f); }
static inline vf vf_set1(float x) { VF_EACH(x); }
static inline vf vf_load(const float* p) { VF_EACH(p[l]); }
static inline vf vf_loadn(const float* p, int n, float fill) { VF_EACH(l < n ? p[l] : fill); }
static inline void vf_store(float* p, vf a) { memcpy(p, a.v, sizeof a.v); }
static inline vf vf_add(vf a, vf b) { VF_EACH(a.v[l] + b.v[l]); }
static inline vf vf_sub(vf a, vf b) { VF_EACH(a.v[l] - b.v[l]); }
static inline vf vf_mul(vf a, vf b) { VF_EACH(a.v[l] * b.v[l]); }
static inline vf vf_fma(vf a, vf b, vf c) { VF_EACH(fmaf(a.v[l], b.v[l], c.v[l])); }
static inline vf vf_max(vf a, vf b) { VF_EACH(a.v[l] > b.v[l] ? a.v[l] : b.v[l]); }
static inline vf vf_min(vf a, vf b) { VF_EACH(a.v[l] < b.v[l] ? a.v[l] : b.v[l]); }
static inline vf vf_round(vf a) { VF_EACH(nearbyintf(a.v[l])); }
static inline float ca_pow2(float n) {
  const uint32_t bits = (uint32_t)((int32_t)n + 127) << 23;
  float f;
  memcpy(&f, &bits, sizeof f);
  return f;
}
static inline vf vf_pow2(vf n) { VF_EACH(ca_pow2(n.v[l])); }
static inline vf vf_zero_below(vf x, float lo, vf y) { VF_EACH(x.v[l] < lo ? 0.0f : y.v[l]); }
static inline vf vf_fill_at_most(vf x, float at, float fill, vf y) { VF_EACH(x.v[l] <= at ? fill : y.v[l]); }
static inline vf vf_pair_sum(vf a, vf b, int k) { VF_EACH((l & k) ? b.v[l - k] + b.v[l] : a.v[l] + a.v[l + k]); }
#undef VF_EACH
#endif

/* The sum of the 16 lanes, by the fixed tree (l + l + 8, + 4, + 2, + 1). */
static inline float ca_hsum(vf a) {
  float t[CA_LANES];
  vf_store(t, a);
  for (int k = 8; k; k >>= 1)
    for (int l = 0; l < k; l++) t[l] = t[l] + t[l + k];
  return t[0];
}

static inline float ca_hmax(vf a) {
  float t[CA_LANES];
  vf_store(t, a);
  for (int k = 8; k; k >>= 1)
    for (int l = 0; l < k; l++) t[l] = t[l] > t[l + k] ? t[l] : t[l + k];
  return t[0];
}

/* Lane c of the result: the sum of x[c]'s 16 lanes (the same tree as ca_hsum, 16 columns at once). */
static inline vf ca_column_sums(const vf x[CA_LANES]) {
  vf y[8], z[4], w[2];
  for (int i = 0; i < 8; i++) y[i] = vf_pair_sum(x[i], x[i + 8], 8);
  for (int i = 0; i < 4; i++) z[i] = vf_pair_sum(y[i], y[i + 4], 4);
  for (int i = 0; i < 2; i++) w[i] = vf_pair_sum(z[i], z[i + 2], 2);
  return vf_pair_sum(w[0], w[1], 1);
}

/* exp(x) for x in [-87.33, 88] (0 below; x above 88 gives exp(88)): n = round(x log2 e),
 * r = x - n ln 2 in two FMAs (ln 2 = C1 + C2, C1 exact in 9 bits), Cephes' expf polynomial
 * (degree 5 + 1 + r, Horner by FMA), times 2^n. Within ~1 ulp of exp on that range. */
static inline vf ca_exp(vf x) {
  const float lo = -87.33654475f, hi = 88.0f;
  const vf xc = vf_min(vf_max(x, vf_set1(lo)), vf_set1(hi));
  const vf n = vf_round(vf_mul(xc, vf_set1(1.44269504088896341f)));
  vf r = vf_fma(n, vf_set1(-0.693359375f), xc);
  r = vf_fma(n, vf_set1(2.12194440e-4f), r);
  vf p = vf_set1(1.9875691500e-4f);
  p = vf_fma(p, r, vf_set1(1.3981999507e-3f));
  p = vf_fma(p, r, vf_set1(8.3334519073e-3f));
  p = vf_fma(p, r, vf_set1(4.1665795894e-2f));
  p = vf_fma(p, r, vf_set1(1.6666665459e-1f));
  p = vf_fma(p, r, vf_set1(5.0000001201e-1f));
  const vf y = vf_add(vf_fma(p, vf_mul(r, r), r), vf_set1(1.0f));
  return vf_zero_below(x, lo, vf_mul(y, vf_pow2(n)));
}

/* For the tests: y = ca_exp(x), element by element. */
void mlpdeploy_cached_attention_exp(const float* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; i += CA_LANES) {
    float in[CA_LANES] = {0}, out[CA_LANES];
    const int64_t m = n - i < CA_LANES ? n - i : CA_LANES;
    memcpy(in, x + i, (size_t)m * sizeof(float));
    vf_store(out, ca_exp(vf_load(in)));
    memcpy(y + i, out, (size_t)m * sizeof(float));
  }
}

/* ---- the work ------------------------------------------------------------------------------------ */
typedef struct {
  int64_t heads, kv_heads;
  float scale;
} CaKernel;

/* One cache row's queries at consecutive columns: normal mode's row b (its Q valid chunk rows), or a ragged segment. */
typedef struct {
  int64_t row;   /* the cache row */
  int64_t token; /* its first query's index in the flattened [B * S] query / position_ids / output (b * S in normal mode) */
  int64_t P, Q;  /* the columns cached before it (its first query's column), its queries */
  int64_t batch; /* normal mode: b, the bias row */
} CaSegment;

typedef struct {
  const float* qkv;                  /* [B][S][(H + 2 KV) D] */
  const float *past_k, *past_v;      /* [R][KV][C][D] (R = B in normal mode) */
  float *present_k, *present_v;      /* [R][KV][Cp][D] */
  const int32_t* seqlens;            /* [B] */
  const int32_t* qlens;              /* [B] or NULL */
  const float *cos, *sin;            /* [positions][D / 2] */
  const int64_t* positions;          /* [B][S] */
  const float* bias;                 /* [bias_batch][bias_heads][S][T] or NULL */
  float* out;                        /* [B][S][H D] */
  const CaSegment* segments;         /* [segments_n]: the work's rows */
  int64_t B, S, H, KV, D, C, Cp, T, R, max_positions, bias_batch, bias_heads, blocks, segments_n;
  float scale;
  int shared_k, shared_v, write_in_attend;
} CaWork;

static inline int64_t ca_valid_rows(const CaWork* w, int64_t b) {
  const int64_t length = (int64_t)w->seqlens[b] + 1;
  return w->qlens ? w->qlens[b] : (w->S < length ? w->S : length);
}

/* y = x rotated at `position` (rotate-half: y[i] = x[i] cos - x[i + D/2] sin, y[i + D/2] = x[i + D/2] cos + x[i] sin). */
static void ca_rotate(const CaWork* w, const float* x, int64_t position, float* y) {
  const int64_t half = w->D / 2;
  const float *c = w->cos + position * half, *s = w->sin + position * half;
  for (int64_t i = 0; i < half; i++) {
    y[i] = x[i] * c[i] - x[i + half] * s[i];
    y[i + half] = x[i + half] * c[i] + x[i] * s[i];
  }
}

/* Segment `seg`, kv head g: present = past's P cached columns (unless shared), then its queries' rotated K and their V
 * at columns P .. P + Q - 1 of its row. */
static void ca_write(const CaWork* w, const CaSegment* seg, int64_t g) {
  const int64_t D = w->D, Q = seg->Q, P = seg->P, cache = seg->row * w->KV + g;
  const int64_t hidden = (w->H + 2 * w->KV) * D;
  float* k = w->present_k + cache * w->Cp * D;
  float* v = w->present_v + cache * w->Cp * D;
  if (!w->shared_k) {
    memset(k, 0, (size_t)(w->Cp * D) * sizeof(float));
    if (P) memcpy(k, w->past_k + cache * w->C * D, (size_t)(P * D) * sizeof(float));
  }
  if (!w->shared_v) {
    memset(v, 0, (size_t)(w->Cp * D) * sizeof(float));
    if (P) memcpy(v, w->past_v + cache * w->C * D, (size_t)(P * D) * sizeof(float));
  }
  for (int64_t s = 0; s < Q; s++) {
    const float* row = w->qkv + (seg->token + s) * hidden;
    ca_rotate(w, row + (w->H + g) * D, w->positions[seg->token + s], k + (P + s) * D);
    memcpy(v + (P + s) * D, row + (w->H + w->KV + g) * D, (size_t)D * sizeof(float));
  }
}

/* Raw scores q.k of nq queries (q: [nq][D]) against columns c0 .. c0 + n - 1 (n <= 16) of K:
 * result[i] lane c = score of query i and column c0 + c (lanes past n: 0). */
static inline __attribute__((always_inline)) void ca_scores_tile(const float* q, const int nq, const int nd, const float* k,
                                                                 int64_t D, int n, vf* result) {
  vf qv[CA_MQ][CA_MAX_ND], part[CA_MQ][CA_LANES];
  for (int i = 0; i < nq; i++)
    for (int j = 0; j < nd; j++) qv[i][j] = vf_load(q + i * D + j * CA_LANES);
  for (int c = 0; c < CA_LANES; c++) {
    if (c < n) {
      vf kv[CA_MAX_ND];
      for (int j = 0; j < nd; j++) kv[j] = vf_load(k + c * D + j * CA_LANES);
      for (int i = 0; i < nq; i++) {
        vf a = vf_mul(qv[i][0], kv[0]);
        for (int j = 1; j < nd; j++) a = vf_fma(qv[i][j], kv[j], a);
        part[i][c] = a;
      }
    } else {
      for (int i = 0; i < nq; i++) part[i][c] = vf_zero();
    }
  }
  for (int i = 0; i < nq; i++) result[i] = ca_column_sums(part[i]);
}

/* acc[i][:] += sum over columns c in [c0, c1) of e[i][c] * V[c][:], column by column, for nq queries. */
static inline __attribute__((always_inline)) void ca_weighted_tile(const float* e, int64_t stride, const int nq, const int nd,
                                                                   const float* v, int64_t D, int64_t c0, int64_t c1,
                                                                   vf acc[CA_MQ][CA_MAX_ND]) {
  vf a[CA_MQ][CA_MAX_ND];
  for (int i = 0; i < nq; i++)
    for (int j = 0; j < nd; j++) a[i][j] = acc[i][j];
  for (int64_t c = c0; c < c1; c++) {
    vf vv[CA_MAX_ND];
    for (int j = 0; j < nd; j++) vv[j] = vf_load(v + c * D + j * CA_LANES);
    for (int i = 0; i < nq; i++) {
      const vf p = vf_set1(e[i * stride + c]);
      for (int j = 0; j < nd; j++) a[i][j] = vf_fma(p, vv[j], a[i][j]);
    }
  }
  for (int i = 0; i < nq; i++)
    for (int j = 0; j < nd; j++) acc[i][j] = a[i][j];
}

/* Specialized for head size 64 and 1..6 queries (registers), generic otherwise: the same operations either way. */
static void ca_scores(const float* q, int nq, int nd, const float* k, int64_t D, int n, vf* result) {
  if (nd == 4) {
    switch (nq) {
      case 1: ca_scores_tile(q, 1, 4, k, D, n, result); return;
      case 2: ca_scores_tile(q, 2, 4, k, D, n, result); return;
      case 3: ca_scores_tile(q, 3, 4, k, D, n, result); return;
      case 4: ca_scores_tile(q, 4, 4, k, D, n, result); return;
      case 5: ca_scores_tile(q, 5, 4, k, D, n, result); return;
      case 6: ca_scores_tile(q, 6, 4, k, D, n, result); return;
      default: break;
    }
  }
  ca_scores_tile(q, nq, nd, k, D, n, result);
}

static void ca_weighted(const float* e, int64_t stride, int nq, int nd, const float* v, int64_t D, int64_t c0, int64_t c1,
                        vf acc[CA_MQ][CA_MAX_ND]) {
  if (nd == 4) {
    switch (nq) {
      case 1: ca_weighted_tile(e, stride, 1, 4, v, D, c0, c1, acc); return;
      case 2: ca_weighted_tile(e, stride, 2, 4, v, D, c0, c1, acc); return;
      case 3: ca_weighted_tile(e, stride, 3, 4, v, D, c0, c1, acc); return;
      case 4: ca_weighted_tile(e, stride, 4, 4, v, D, c0, c1, acc); return;
      case 5: ca_weighted_tile(e, stride, 5, 4, v, D, c0, c1, acc); return;
      case 6: ca_weighted_tile(e, stride, 6, 4, v, D, c0, c1, acc); return;
      default: break;
    }
  }
  ca_weighted_tile(e, stride, nq, nd, v, D, c0, c1, acc);
}

/* Segment `seg`, kv head g, its queries [s0, s1) (all < Q): the attention of the H / KV query heads. */
static void ca_attend(const CaWork* w, const CaSegment* seg, int64_t g, int64_t s0, int64_t s1, float* scratch) {
  const int64_t D = w->D, group = w->H / w->KV, nd = D / CA_LANES, P = seg->P;
  const int64_t hidden = (w->H + 2 * w->KV) * D, stride = (P + s1 + CA_LANES - 1) / CA_LANES * CA_LANES;
  const float* k = w->present_k + (seg->row * w->KV + g) * w->Cp * D;
  const float* v = w->present_v + (seg->row * w->KV + g) * w->Cp * D;
  float* q = scratch;                /* [CA_MQ][D] rotated queries */
  float* e = scratch + CA_MQ * D;    /* [CA_MQ][stride] scores, then exp(score - max) */
  const int64_t total = (s1 - s0) * group;
  for (int64_t first = 0; first < total; first += CA_MQ) {
    const int nq = (int)(total - first < CA_MQ ? total - first : CA_MQ);
    int64_t end[CA_MQ], head[CA_MQ], row[CA_MQ], end_min = INT64_MAX, end_max = 0;
    const float* bias[CA_MQ];
    for (int i = 0; i < nq; i++) {
      const int64_t s = s0 + (first + i) / group, h = g * group + (first + i) % group;
      row[i] = s, head[i] = h, end[i] = P + s + 1;
      end_min = end[i] < end_min ? end[i] : end_min;
      end_max = end[i] > end_max ? end[i] : end_max;
      ca_rotate(w, w->qkv + (seg->token + s) * hidden + h * D, w->positions[seg->token + s], q + i * D);
      bias[i] = w->bias ? w->bias + (((w->bias_batch > 1 ? seg->batch : 0) * w->bias_heads + (w->bias_heads > 1 ? h : 0)) * w->S + s) * w->T
                        : NULL;
    }
    /* scores: scale * q.k + bias, for the columns any of the queries attends */
    for (int64_t c0 = 0; c0 < end_max; c0 += CA_LANES) {
      const int n = (int)(end_max - c0 < CA_LANES ? end_max - c0 : CA_LANES);
      vf result[CA_MQ];
      ca_scores(q, nq, (int)nd, k + c0 * D, D, n, result);
      for (int i = 0; i < nq; i++) {
        vf s = vf_mul(result[i], vf_set1(w->scale));
        if (bias[i]) {  /* a bias of -FLT_MAX (or -inf) masks the column out, as ONNX Runtime's kernel does */
          const vf add = vf_loadn(bias[i] + c0, n, 0.0f);
          s = vf_fill_at_most(add, -FLT_MAX, -INFINITY, vf_add(s, add));
        }
        vf_store(e + i * stride + c0, s);
      }
    }
    /* softmax over each query's own columns 0 .. end - 1: e = exp(score - max), 1 / sum */
    float inverse[CA_MQ];
    for (int i = 0; i < nq; i++) {
      float* row_e = e + i * stride;
      vf m = vf_set1(-INFINITY);
      for (int64_t c0 = 0; c0 < end[i]; c0 += CA_LANES) {
        const int n = (int)(end[i] - c0 < CA_LANES ? end[i] - c0 : CA_LANES);
        m = vf_max(m, n == CA_LANES ? vf_load(row_e + c0) : vf_loadn(row_e + c0, n, -INFINITY));
      }
      const float top = ca_hmax(m);
      const vf max = vf_set1(top == -INFINITY ? 0.0f : top); /* every column masked: all weights 0, the output 0 */
      vf sum = vf_zero();
      for (int64_t c0 = 0; c0 < end[i]; c0 += CA_LANES) {
        const int n = (int)(end[i] - c0 < CA_LANES ? end[i] - c0 : CA_LANES);
        const vf x = ca_exp(vf_sub(n == CA_LANES ? vf_load(row_e + c0) : vf_loadn(row_e + c0, n, -INFINITY), max));
        vf_store(row_e + c0, x);
        sum = vf_add(sum, x);
      }
      const float total = ca_hsum(sum);
      inverse[i] = total > 0.0f ? 1.0f / total : 0.0f;
    }
    /* weighted V: the columns every query attends together, then each query's remaining ones */
    vf acc[CA_MQ][CA_MAX_ND];
    for (int i = 0; i < nq; i++)
      for (int64_t j = 0; j < nd; j++) acc[i][j] = vf_zero();
    ca_weighted(e, stride, nq, (int)nd, v, D, 0, end_min, acc);
    for (int i = 0; i < nq; i++) {
      if (end[i] > end_min) {
        vf one[CA_MQ][CA_MAX_ND];
        for (int64_t j = 0; j < nd; j++) one[0][j] = acc[i][j];
        ca_weighted(e + i * stride, stride, 1, (int)nd, v, D, end_min, end[i], one);
        for (int64_t j = 0; j < nd; j++) acc[i][j] = one[0][j];
      }
      float* out = w->out + (seg->token + row[i]) * w->H * D + head[i] * D;
      for (int64_t j = 0; j < nd; j++) vf_store(out + j * CA_LANES, vf_mul(acc[i][j], vf_set1(inverse[i])));
    }
  }
}

static float* ca_scratch(const CaWork* w, const CaSegment* seg) {
  const int64_t length = seg->P + seg->Q + CA_LANES;
  return (float*)malloc((size_t)(CA_MQ * (w->D + length)) * sizeof(float));
}

/* Work item i: (segment, kv head) writing its cache and, when every segment is one block, attending. */
static void ca_write_items(void* arg, int64_t i0, int64_t i1) {
  const CaWork* w = (const CaWork*)arg;
  for (int64_t i = i0; i < i1; i++) {
    const CaSegment* seg = &w->segments[i / w->KV];
    const int64_t g = i % w->KV;
    ca_write(w, seg, g);
    if (!w->write_in_attend || seg->Q == 0) continue;
    float* scratch = ca_scratch(w, seg);
    if (scratch) ca_attend(w, seg, g, 0, seg->Q, scratch);
    free(scratch);
  }
}

/* Work item i: (segment, kv head, block of CA_POSITIONS of its queries from its first) attending (the cache is written). */
static void ca_attend_items(void* arg, int64_t i0, int64_t i1) {
  const CaWork* w = (const CaWork*)arg;
  for (int64_t i = i0; i < i1; i++) {
    const int64_t block = i % w->blocks, g = i / w->blocks % w->KV;
    const CaSegment* seg = &w->segments[i / w->blocks / w->KV];
    const int64_t s0 = block * CA_POSITIONS, s1 = s0 + CA_POSITIONS < seg->Q ? s0 + CA_POSITIONS : seg->Q;
    if (s0 >= s1) continue;
    float* scratch = ca_scratch(w, seg);
    if (scratch) ca_attend(w, seg, g, s0, s1, scratch);
    free(scratch);
  }
}

/* ---- the ONNX Runtime custom op ------------------------------------------------------------------ */
static void* ca_create(const MdCustomOp* op, const MdOrtApi* api, const OrtKernelInfo* info) {
  (void)op;
  CaKernel* kernel = (CaKernel*)calloc(1, sizeof *kernel);
  if (kernel == NULL) return NULL;
  OrtStatus* status = MD_ORT(api, KernelInfoGetAttribute_int64)(info, "num_heads", &kernel->heads);
  if (status) { MD_ORT(api, ReleaseStatus)(status); kernel->heads = 0; }
  status = MD_ORT(api, KernelInfoGetAttribute_int64)(info, "kv_num_heads", &kernel->kv_heads);
  if (status) { MD_ORT(api, ReleaseStatus)(status); kernel->kv_heads = 0; }
  status = MD_ORT(api, KernelInfoGetAttribute_float)(info, "scale", &kernel->scale);
  if (status) { MD_ORT(api, ReleaseStatus)(status); kernel->scale = 0.0f; }
  return kernel;
}

static void ca_destroy(void* k) { free(k); }

static void ca_fill_nan(float* y, int64_t n) {
  for (int64_t i = 0; y && i < n; i++) y[i] = NAN;
}

static int64_t ca_count(const MdTensor* t) {
  int64_t n = 1;
  for (size_t i = 0; i < t->rank; i++) n *= t->dims[i];
  return n;
}

/* Whether the inputs are ones the kernel takes (the row lengths, positions and bias shape included). */
static int ca_check(const CaWork* w, const MdTensor* in, const int* present) {
  const int64_t B = w->B, S = w->S, D = w->D;
  if (w->H <= 0 || w->KV <= 0 || w->H % w->KV || D <= 0 || D % CA_LANES || D / CA_LANES > CA_MAX_ND) return 0;
  if (in[0].type != MD_TENSOR_FLOAT || in[0].rank != 3 || in[0].dims[2] != (w->H + 2 * w->KV) * D) return 0;
  for (int t = 1; t <= 2; t++)
    if (in[t].type != MD_TENSOR_FLOAT || in[t].rank != 4 || in[t].dims[0] != B || in[t].dims[1] != w->KV || in[t].dims[2] != w->C ||
        in[t].dims[3] != D)
      return 0;
  if (in[3].type != CA_TENSOR_INT32 || ca_count(&in[3]) != B || in[3].rank != 1) return 0;
  if (in[4].type != CA_TENSOR_INT32 || ca_count(&in[4]) != 1 || w->T < 1) return 0;
  for (int t = 5; t <= 6; t++)
    if (in[t].type != MD_TENSOR_FLOAT || in[t].rank != 2 || in[t].dims[0] != w->max_positions || in[t].dims[1] != D / 2) return 0;
  if (in[7].type != CA_TENSOR_INT64 || in[7].rank != 2 || in[7].dims[0] != B || in[7].dims[1] != S) return 0;
  if (present[8] && (in[8].type != MD_TENSOR_FLOAT || in[8].rank != 4 || (in[8].dims[0] != 1 && in[8].dims[0] != B) ||
                     (in[8].dims[1] != 1 && in[8].dims[1] != w->H) || in[8].dims[2] != S || in[8].dims[3] != w->T))
    return 0;
  if (present[9] && (in[9].type != CA_TENSOR_INT32 || in[9].rank != 1 || in[9].dims[0] != B)) return 0;
  for (int64_t b = 0; b < B; b++) {
    const int64_t length = (int64_t)w->seqlens[b] + 1;
    if (length < 1 || length > w->T) return 0;
    const int64_t Q = w->qlens ? w->qlens[b] : (S < length ? S : length), P = length - Q;
    if (Q < 0 || Q > S || Q > length || P > w->C || P + S > w->Cp) return 0;
    for (int64_t s = 0; s < Q; s++)
      if (w->positions[b * S + s] < 0 || w->positions[b * S + s] >= w->max_positions) return 0;
  }
  return 1;
}

/* Normal mode's segments: row b's Q_b valid chunk rows, at columns P_b .. L_b - 1 of row b (NULL: out of memory). */
static CaSegment* ca_rows(CaWork* w) {
  CaSegment* segments = (CaSegment*)malloc((size_t)(w->B > 0 ? w->B : 1) * sizeof(CaSegment));
  if (segments == NULL) return NULL;
  for (int64_t b = 0; b < w->B; b++) {
    const int64_t Q = ca_valid_rows(w, b);
    segments[b] = (CaSegment){.row = b, .token = b * w->S, .P = (int64_t)w->seqlens[b] + 1 - Q, .Q = Q, .batch = b};
  }
  w->segments_n = w->B;
  return segments;
}

/* Ragged mode (token_rows given, T = S tokens): whether the inputs are ones the kernel takes; if so *segments (w->segments_n
 * of them, malloc'd): the maximal runs of tokens of one row at consecutive positions, each row in one run at most. */
static int ca_check_ragged(CaWork* w, const MdTensor* in, const int* present, CaSegment** segments) {
  const int64_t T = w->S, D = w->D, R = w->R;
  if (w->H <= 0 || w->KV <= 0 || w->H % w->KV || D <= 0 || D % CA_LANES || D / CA_LANES > CA_MAX_ND || R < 1) return 0;
  if (in[0].type != MD_TENSOR_FLOAT || in[0].rank != 3 || in[0].dims[0] != 1 || in[0].dims[2] != (w->H + 2 * w->KV) * D) return 0;
  for (int t = 1; t <= 2; t++)
    if (in[t].type != MD_TENSOR_FLOAT || in[t].rank != 4 || in[t].dims[0] != R || in[t].dims[1] != w->KV || in[t].dims[2] != w->C ||
        in[t].dims[3] != D)
      return 0;
  if (in[3].type != CA_TENSOR_INT32 || in[4].type != CA_TENSOR_INT32 || (present[9] && in[9].type != CA_TENSOR_INT32)) return 0;
  for (int t = 5; t <= 6; t++)
    if (in[t].type != MD_TENSOR_FLOAT || in[t].rank != 2 || in[t].dims[0] != w->max_positions || in[t].dims[1] != D / 2) return 0;
  if (in[7].type != CA_TENSOR_INT64 || in[7].rank != 2 || in[7].dims[0] != 1 || in[7].dims[1] != T) return 0;
  if (in[10].type != CA_TENSOR_INT32 || in[10].rank != 1 || in[10].dims[0] != T) return 0;
  const int32_t* rows = (const int32_t*)in[10].data;
  const int64_t* positions = w->positions;
  CaSegment* runs = (CaSegment*)malloc((size_t)T * sizeof(CaSegment));
  unsigned char* seen = (unsigned char*)calloc((size_t)R, 1);
  int ok = runs != NULL && seen != NULL;
  int64_t n = 0;
  for (int64_t t = 0; ok && t < T;) {
    const int64_t r = rows[t], first = positions[t];
    int64_t end = t + 1;
    while (end < T && rows[end] == r && positions[end - 1] < INT64_MAX && positions[end] == positions[end - 1] + 1) end++;
    const int64_t last = positions[end - 1];
    if (r < 0 || r >= R || seen[r] || first < 0 || last >= w->C || last >= w->max_positions) ok = 0;
    else seen[r] = 1, runs[n++] = (CaSegment){.row = r, .token = t, .P = first, .Q = end - t, .batch = 0};
    t = end;
  }
  free(seen);
  if (!ok) {
    free(runs);
    return 0;
  }
  *segments = runs, w->segments_n = n;
  return 1;
}

static void ca_compute(void* k, OrtKernelContext* context) {
  const CaKernel* kernel = (const CaKernel*)k;
  MdTensor in[11];
  int present[11];
  memset(in, 0, sizeof in);
  for (size_t i = 0; i < 11; i++) present[i] = md_input(context, i, &in[i]) == 0;
  for (size_t i = 0; i < 8; i++)
    if (!present[i]) return;
  const int ragged = present[10] && ca_count(&in[10]) > 0; /* an empty token_rows: normal mode */
  CaWork w;
  memset(&w, 0, sizeof w);
  w.H = kernel->heads, w.KV = kernel->kv_heads;
  w.B = in[0].rank == 3 ? in[0].dims[0] : 0, w.S = in[0].rank == 3 ? in[0].dims[1] : 0;
  w.D = in[1].rank == 4 ? in[1].dims[3] : 0, w.C = in[1].rank == 4 ? in[1].dims[2] : 0;
  w.R = ragged ? (in[1].rank == 4 ? in[1].dims[0] : 0) : w.B;
  w.T = !ragged && in[4].type == CA_TENSOR_INT32 && ca_count(&in[4]) == 1 ? *(const int32_t*)in[4].data : 0;
  w.Cp = w.C > w.T ? w.C : w.T;
  w.max_positions = in[5].rank == 2 ? in[5].dims[0] : 0;
  const int64_t out_dims[3] = {w.B, w.S, w.H * w.D}, cache_dims[4] = {w.R, w.KV, w.Cp, w.D};
  float* out = (float*)md_output(context, 0, out_dims, 3);
  float* present_k = (float*)md_output(context, 1, cache_dims, 4);
  float* present_v = (float*)md_output(context, 2, cache_dims, 4);
  if (out == NULL || present_k == NULL || present_v == NULL) return;
  w.qkv = (const float*)in[0].data, w.past_k = (const float*)in[1].data, w.past_v = (const float*)in[2].data;
  w.seqlens = (const int32_t*)in[3].data, w.cos = (const float*)in[5].data, w.sin = (const float*)in[6].data;
  w.positions = (const int64_t*)in[7].data;
  w.bias = present[8] && !ragged ? (const float*)in[8].data : NULL;
  w.bias_batch = present[8] && in[8].rank == 4 ? in[8].dims[0] : 1, w.bias_heads = present[8] && in[8].rank == 4 ? in[8].dims[1] : 1;
  w.qlens = present[9] ? (const int32_t*)in[9].data : NULL;
  w.out = out, w.present_k = present_k, w.present_v = present_v;
  w.scale = kernel->scale != 0.0f ? kernel->scale : 1.0f / sqrtf((float)w.D);
  w.shared_k = present_k == w.past_k, w.shared_v = present_v == w.past_v;
  CaSegment* segments = NULL;
  if (ragged ? !ca_check_ragged(&w, in, present, &segments) : !ca_check(&w, in, present) || (segments = ca_rows(&w)) == NULL) {
    ca_fill_nan(out, w.B * w.S * w.H * w.D);
    return;
  }
  w.segments = segments;
  if (ragged) { /* present is the past (every row, every column), then the segments are written in place */
    const size_t bytes = (size_t)(w.R * w.KV * w.C * w.D) * sizeof(float);
    if (!w.shared_k) memcpy(present_k, w.past_k, bytes), w.shared_k = 1;
    if (!w.shared_v) memcpy(present_v, w.past_v, bytes), w.shared_v = 1;
  }
  int64_t work = 0, longest = 0;
  for (int64_t i = 0; i < w.segments_n; i++) {
    const CaSegment* seg = &segments[i];
    if (!ragged && seg->Q < w.S) memset(out + (seg->token + seg->Q) * w.H * w.D, 0, (size_t)((w.S - seg->Q) * w.H * w.D) * sizeof(float));
    work += 2 * seg->Q * (seg->P + seg->Q) * w.H * w.D;
    longest = seg->Q > longest ? seg->Q : longest;
  }
  w.blocks = (longest + CA_POSITIONS - 1) / CA_POSITIONS;
  w.write_in_attend = w.blocks <= 1;
  const int serial = work < CA_SERIAL_WORK;
  if (serial) ca_write_items(&w, 0, w.segments_n * w.KV);
  else md_kernel_parallel_for(context, w.segments_n * w.KV, ca_write_items, &w);
  if (!w.write_in_attend) {
    if (serial) ca_attend_items(&w, 0, w.segments_n * w.KV * w.blocks);
    else md_kernel_parallel_for(context, w.segments_n * w.KV * w.blocks, ca_attend_items, &w);
  }
  free(segments);
}

static const char* ca_name(const MdCustomOp* op) { (void)op; return "CachedAttention"; }
static const char* ca_provider(const MdCustomOp* op) { (void)op; return NULL; /* CPU */ }
static int ca_input_type(const MdCustomOp* op, size_t i) {
  (void)op;
  return i == 3 || i == 4 || i == 9 || i == 10 ? CA_TENSOR_INT32 : i == 7 ? CA_TENSOR_INT64 : MD_TENSOR_FLOAT;
}
static size_t ca_inputs(const MdCustomOp* op) { (void)op; return 11; }
static int ca_output_type(const MdCustomOp* op, size_t i) { (void)op; (void)i; return MD_TENSOR_FLOAT; }
static size_t ca_outputs(const MdCustomOp* op) { (void)op; return 3; }
static int ca_input_kind(const MdCustomOp* op, size_t i) { (void)op; return i >= 8 ? CA_OPTIONAL : MD_INPUT_OUTPUT_REQUIRED; }
static int ca_required(const MdCustomOp* op, size_t i) { (void)op; (void)i; return MD_INPUT_OUTPUT_REQUIRED; }
static int ca_memory(const MdCustomOp* op, size_t i) { (void)op; (void)i; return MD_MEM_DEFAULT; }

MdCustomOp md_cached_attention_op = {
    MD_ORT_API_VERSION, ca_create, ca_name, ca_provider, ca_input_type, ca_inputs, ca_output_type, ca_outputs,
    ca_compute, ca_destroy, ca_input_kind, ca_required, ca_memory,
};
