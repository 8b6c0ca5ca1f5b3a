/* The small per-layer operations of a CPU decode step, fused: RMS norm, rotary embedding, KV cache
 * write, paged decode attention, SiLU-and-multiply.
 *
 * In torch each of these is 5-10 tensor operations of a few microseconds each; over 30 layers that
 * was ~10 ms of a 30 ms SmolLM2 step. Here each is one call. Attention reads the paged cache in
 * place through the block table, where the torch path first copies every sequence's context out.
 *
 * Tensors are float32 or bfloat16 (`bf16` flag). bf16 results are rounded at the same points as the
 * torch reference code (tests compare the two), arithmetic in between is float32.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "bf16.h"

INLINE float load(const void *base, int64_t i, int bf16) {
  return bf16 ? bf16_to_f32(((const uint16_t *)base)[i]) : ((const float *)base)[i];
}
INLINE void store(void *base, int64_t i, float v, int bf16) {
  if (bf16) ((uint16_t *)base)[i] = f32_to_bf16(v);
  else ((float *)base)[i] = v;
}

/* q . k over head_dim values (q float32, k float32 or bf16 from the cache). */
INLINE float dot(const float *q, const void *k, int64_t offset, int head_dim, int bf16) {
#ifdef __AVX512F__
  if (head_dim % 16 == 0) {
    __m512 acc = _mm512_setzero_ps();
    for (int d = 0; d < head_dim; d += 16) {
      __m512 kv = bf16 ? load16_bf16((const uint16_t *)k + offset + d) : _mm512_loadu_ps((const float *)k + offset + d);
      acc = _mm512_fmadd_ps(_mm512_loadu_ps(q + d), kv, acc);
    }
    return _mm512_reduce_add_ps(acc);
  }
#endif
  float s = 0.f;
  for (int d = 0; d < head_dim; d++) s += q[d] * load(k, offset + d, bf16);
  return s;
}

/* out[0:head_dim] = sum_p weights[p] * v[position p]; the accumulator stays in registers when head_dim is
 * a multiple of 16 up to 256 (HD16 = head_dim / 16, a constant in each specialisation). */
INLINE void weighted_sum(float *out, const float *weights, const void *v_cache, const int32_t *table, int length,
                         int block_size, int num_kv, int g, int head_dim, int bf16, int HD16) {
#ifdef __AVX512F__
  if (HD16) {
    __m512 acc[16];
    for (int c = 0; c < HD16; c++) acc[c] = _mm512_setzero_ps();
    for (int p = 0; p < length; p++) {
      int64_t base = (((int64_t)table[p / block_size] * block_size + p % block_size) * num_kv + g) * head_dim;
      __m512 w = _mm512_set1_ps(weights[p]);
      for (int c = 0; c < HD16; c++) {
        __m512 vv = bf16 ? load16_bf16((const uint16_t *)v_cache + base + 16 * c)
                         : _mm512_loadu_ps((const float *)v_cache + base + 16 * c);
        acc[c] = _mm512_fmadd_ps(w, vv, acc[c]);
      }
    }
    for (int c = 0; c < HD16; c++) _mm512_storeu_ps(out + 16 * c, acc[c]);
    return;
  }
#endif
  for (int d = 0; d < head_dim; d++) out[d] = 0.f;
  for (int p = 0; p < length; p++) {
    int64_t base = (((int64_t)table[p / block_size] * block_size + p % block_size) * num_kv + g) * head_dim;
    for (int d = 0; d < head_dim; d++) out[d] += weights[p] * load(v_cache, base + d, bf16);
  }
}

/* e^x for x <= 0 to ~2 ulp, in a form GCC vectorizes (libm's expf is a scalar call here):
 * e^x = 2^n * 2^f with n = round(x * log2 e), polynomial for 2^f on [-0.5, 0.5]. */
INLINE float exp_neg(float x) {
  x = x < -87.f ? -87.f : x;
  float t = x * 1.44269504088896341f;
  float n = (t + 12582912.f) - 12582912.f; /* round to nearest: adding 1.5 * 2^23 drops the fraction */
  float f = t - n;
  float p = 1.535336188319500e-4f;
  p = p * f + 1.339887440266574e-3f;
  p = p * f + 9.618437357674640e-3f;
  p = p * f + 5.550332471162809e-2f;
  p = p * f + 2.402264791363012e-1f;
  p = p * f + 6.931472028550421e-1f;
  p = p * f + 1.0f;
  int32_t bits = ((int32_t)n + 127) << 23;
  float scale; memcpy(&scale, &bits, 4);
  return p * scale;
}

/* What storing then loading gives: the rounding a torch op applies to its bf16 result. */
INLINE float as_stored(float v, int bf16) { return bf16 ? round_bf16(v) : v; }

/* OpenMP outlines a parallel loop's body before constants propagate, so each operation is a row (or
 * task) function specialised on `bf16` and the parallel loop picks the specialisation per row.
 *
 * Each operation is a *_team function, a worksharing loop run by the threads of an enclosing parallel
 * region (its implicit barrier ends the operation), so that a whole decode step can run in one region
 * (cpu_decode.c); the exported function of the same name without _team wraps it in its own region. */
#define BY_DTYPE(bf16, call_f32, call_bf16) \
  do {                                      \
    if (bf16) call_bf16;                    \
    else call_f32;                          \
  } while (0)

/* out = weight * (x / sqrt(mean(x^2) + eps)); the normalised x is rounded before the weight multiplies. */
INLINE void rms_norm_row(const void *x, const void *weight, void *out, int64_t base, int dim, float eps, int bf16) {
  float squares = 0.f;
#pragma omp simd reduction(+ : squares)
  for (int i = 0; i < dim; i++) { float v = load(x, base + i, bf16); squares += v * v; }
  float scale = 1.f / sqrtf(squares / dim + eps);
  for (int i = 0; i < dim; i++)
    store(out, base + i, load(weight, i, bf16) * as_stored(load(x, base + i, bf16) * scale, bf16), bf16);
}
void rms_norm_team(const void *x, const void *weight, void *out, int rows, int dim, float eps, int bf16) {
#pragma omp for schedule(static)
  for (int r = 0; r < rows; r++)
    BY_DTYPE(bf16, rms_norm_row(x, weight, out, (int64_t)r * dim, dim, eps, 0),
             rms_norm_row(x, weight, out, (int64_t)r * dim, dim, eps, 1));
}
void rms_norm(const void *x, const void *weight, void *out, int rows, int dim, float eps, int bf16) {
#pragma omp parallel if (rows > 8)
  rms_norm_team(x, weight, out, rows, dim, eps, bf16);
}

/* x += delta (rounded as torch's add), then out = rms_norm(x): the residual add and the next norm in one
 * pass, where the layer code would make two calls and a torch op. */
INLINE void add_rms_norm_row(void *x, const void *delta, const void *weight, void *out, int64_t base, int dim,
                             float eps, int bf16) {
  for (int i = 0; i < dim; i++) store(x, base + i, load(x, base + i, bf16) + load(delta, base + i, bf16), bf16);
  rms_norm_row(x, weight, out, base, dim, eps, bf16);
}
void add_rms_norm_team(void *x, const void *delta, const void *weight, void *out, int rows, int dim, float eps,
                       int bf16) {
#pragma omp for schedule(static)
  for (int r = 0; r < rows; r++)
    BY_DTYPE(bf16, add_rms_norm_row(x, delta, weight, out, (int64_t)r * dim, dim, eps, 0),
             add_rms_norm_row(x, delta, weight, out, (int64_t)r * dim, dim, eps, 1));
}
void add_rms_norm(void *x, const void *delta, const void *weight, void *out, int rows, int dim, float eps, int bf16) {
#pragma omp parallel if (rows > 8)
  add_rms_norm_team(x, delta, weight, out, rows, dim, eps, bf16);
}

/* Rotates `heads` heads of head_dim starting at `base` (one row), in place (rotate-half form).
 * cos_row/sin_row: float32 [head_dim / 2]. torch computes x * cos + rotate_half(x) * sin with each
 * product rounded, then the sum: so does this. */
INLINE void rotary_row(void *x, int64_t base, int heads, int head_dim, const float *cos_row, const float *sin_row,
                       int bf16) {
  int half = head_dim / 2;
  for (int h = 0; h < heads; h++, base += head_dim)
    for (int i = 0; i < half; i++) {
      float c = as_stored(cos_row[i], bf16), s = as_stored(sin_row[i], bf16);
      float a = load(x, base + i, bf16), b = load(x, base + half + i, bf16);
      store(x, base + i, as_stored(a * c, bf16) + as_stored(-b * s, bf16), bf16);
      store(x, base + half + i, as_stored(b * c, bf16) + as_stored(a * s, bf16), bf16);
    }
}
/* Copies `width` values at column `col` of row r into cache[slots[r]] (rows of `width`). */
INLINE void store_row(const void *x, int r, int64_t row_stride, int col, int width, const int64_t *slots,
                      void *cache, int bf16) {
  size_t size = bf16 ? 2 : 4;
  memcpy((char *)cache + (size_t)slots[r] * width * size, (const char *)x + ((size_t)r * row_stride + col) * size,
         (size_t)width * size);
}

/* The attention input of a layer in one call: rotate the q and k heads of each qkv row in place, then
 * store its k and v heads in the caches at the row's slot. */
void rotate_and_store_team(void *qkv, int rows, int num_q, int num_kv, int head_dim, const float *cos_table,
                           const float *sin_table, const int64_t *slots, void *k_cache, void *v_cache, int bf16) {
  int64_t width = (int64_t)(num_q + 2 * num_kv) * head_dim;
  int kv_width = num_kv * head_dim;
  int half = head_dim / 2;
#pragma omp for schedule(static)
  for (int r = 0; r < rows; r++) {
    const float *c = cos_table + (int64_t)r * half, *s = sin_table + (int64_t)r * half;
    BY_DTYPE(bf16, rotary_row(qkv, r * width, num_q + num_kv, head_dim, c, s, 0),
             rotary_row(qkv, r * width, num_q + num_kv, head_dim, c, s, 1));
    store_row(qkv, r, width, num_q * head_dim, kv_width, slots, k_cache, bf16);
    store_row(qkv, r, width, (num_q + num_kv) * head_dim, kv_width, slots, v_cache, bf16);
  }
}
void rotate_and_store(void *qkv, int rows, int num_q, int num_kv, int head_dim, const float *cos_table,
                      const float *sin_table, const int64_t *slots, void *k_cache, void *v_cache, int bf16) {
#pragma omp parallel if (rows > 8)
  rotate_and_store_team(qkv, rows, num_q, num_kv, head_dim, cos_table, sin_table, slots, k_cache, v_cache, bf16);
}

/* Attention weights from scores, in place: softmax in float32 (an empty row sums to 0 and stays). */
INLINE void softmax_in_place(float *row, int length) {
  float top = -INFINITY, total = 0.f;
#pragma omp simd reduction(max : top)
  for (int p = 0; p < length; p++) top = row[p] > top ? row[p] : top;
#pragma omp simd reduction(+ : total)
  for (int p = 0; p < length; p++) { row[p] = exp_neg(row[p] - top); total += row[p]; }
  float inv = total > 0.f ? 1.f / total : 0.f;
  for (int p = 0; p < length; p++) row[p] *= inv;
}

#ifdef __AVX512F__
INLINE __m512 load16(const void *base, int64_t i, int bf16) {
  return bf16 ? load16_bf16((const uint16_t *)base + i) : _mm512_loadu_ps((const float *)base + i);
}

/* attend_group below for head_dim = 16 * HD16 and G queries per KV head, both constants, so that every
 * accumulator is a register. Scores: each key is loaded once for the G queries, 16 positions' products
 * summed by one sum16x16 instead of a horizontal sum per position and query. Values: each value
 * row is loaded once and added into all G outputs, G * HD16 independent accumulators. */
INLINE void attend_group_simd(const void *q, int64_t q_base, const void *k_cache, const void *v_cache,
                              const int32_t *table, int length, int num_kv, int g, int block_size, float scale,
                              void *out, int64_t out_base, float *scores, int bf16, int HD16, int G) {
  int head_dim = 16 * HD16;
  __m512 qv[4][8], acc[4][8];
  for (int j = 0; j < G; j++)
    for (int c = 0; c < HD16; c++)
      qv[j][c] = _mm512_mul_ps(load16(q, q_base + (int64_t)j * head_dim + 16 * c, bf16), _mm512_set1_ps(scale));
  for (int p0 = 0; p0 < length; p0 += 16) {
    int n = length - p0 < 16 ? length - p0 : 16;
    __m512 products[4][16];
    for (int i = 0; i < 16; i++) {
      if (i >= n) {
        for (int j = 0; j < G; j++) products[j][i] = _mm512_setzero_ps();
        continue;
      }
      int p = p0 + i;
      int64_t base = (((int64_t)table[p / block_size] * block_size + p % block_size) * num_kv + g) * head_dim;
      __m512 kv[8];
      for (int c = 0; c < HD16; c++) kv[c] = load16(k_cache, base + 16 * c, bf16);
      for (int j = 0; j < G; j++) {
        __m512 a = _mm512_mul_ps(qv[j][0], kv[0]);
        for (int c = 1; c < HD16; c++) a = _mm512_fmadd_ps(qv[j][c], kv[c], a);
        products[j][i] = a;
      }
    }
    for (int j = 0; j < G; j++)
      _mm512_mask_storeu_ps(scores + (int64_t)j * length + p0, (__mmask16)((1u << n) - 1), sum16x16(products[j]));
  }
  for (int j = 0; j < G; j++) {
    softmax_in_place(scores + (int64_t)j * length, length);
    for (int c = 0; c < HD16; c++) acc[j][c] = _mm512_setzero_ps();
  }
  for (int p = 0; p < length; p++) {
    int64_t base = (((int64_t)table[p / block_size] * block_size + p % block_size) * num_kv + g) * head_dim;
    __m512 vv[8];
    for (int c = 0; c < HD16; c++) vv[c] = load16(v_cache, base + 16 * c, bf16);
    for (int j = 0; j < G; j++) {
      __m512 w = _mm512_set1_ps(scores[(int64_t)j * length + p]);
      for (int c = 0; c < HD16; c++) acc[j][c] = _mm512_fmadd_ps(w, vv[c], acc[j][c]);
    }
  }
  for (int j = 0; j < G; j++) {
    float result[128];
    for (int c = 0; c < HD16; c++) _mm512_storeu_ps(result + 16 * c, acc[j][c]);
    for (int d = 0; d < head_dim; d++) store(out, out_base + (int64_t)j * head_dim + d, result[d], bf16);
  }
}
#endif

/* Attention of one sequence's query group (the queries sharing KV head g) over its cached context:
 * scores for every position, softmax in float32, then the weighted sum of values; keys and values
 * are each read once. */
INLINE void attend_group(const void *q, int64_t q_base, const void *k_cache, const void *v_cache,
                         const int32_t *table, int length, int group, int num_kv, int g, int head_dim,
                         int block_size, float scale, void *out, int64_t out_base, int bf16) {
  float qv[16][256], acc[256]; /* group <= 16, head_dim <= 256: checked by the caller */
  float local[4096];
  size_t need = (size_t)group * (length > 0 ? length : 1);
  float *scores = need <= 4096 ? local : malloc(sizeof(float) * need);
#ifdef __AVX512F__
#define ATTEND_SIMD(HD16, G) \
  attend_group_simd(q, q_base, k_cache, v_cache, table, length, num_kv, g, block_size, scale, out, out_base, scores, \
                    bf16, HD16, G)
  int simd = 1;
  switch ((head_dim == 64 || head_dim == 128) && group <= 4 ? head_dim * 8 + group : 0) {
    case 64 * 8 + 1: ATTEND_SIMD(4, 1); break;
    case 64 * 8 + 2: ATTEND_SIMD(4, 2); break;
    case 64 * 8 + 3: ATTEND_SIMD(4, 3); break;
    case 64 * 8 + 4: ATTEND_SIMD(4, 4); break;
    case 128 * 8 + 1: ATTEND_SIMD(8, 1); break;
    case 128 * 8 + 2: ATTEND_SIMD(8, 2); break;
    case 128 * 8 + 3: ATTEND_SIMD(8, 3); break;
    case 128 * 8 + 4: ATTEND_SIMD(8, 4); break;
    default: simd = 0;
  }
#undef ATTEND_SIMD
  if (simd) {
    if (scores != local) free(scores);
    return;
  }
#endif
  for (int j = 0; j < group; j++)
    for (int d = 0; d < head_dim; d++) qv[j][d] = load(q, q_base + (int64_t)j * head_dim + d, bf16) * scale;
  for (int p = 0; p < length; p++) {
    int64_t kbase = (((int64_t)table[p / block_size] * block_size + p % block_size) * num_kv + g) * head_dim;
    for (int j = 0; j < group; j++) scores[(int64_t)j * length + p] = dot(qv[j], k_cache, kbase, head_dim, bf16);
  }
  for (int j = 0; j < group; j++) {
    float *row = scores + (int64_t)j * length;
    softmax_in_place(row, length);
#ifdef __AVX512F__
    if (head_dim == 64)
      weighted_sum(acc, row, v_cache, table, length, block_size, num_kv, g, head_dim, bf16, 4);
    else if (head_dim == 128)
      weighted_sum(acc, row, v_cache, table, length, block_size, num_kv, g, head_dim, bf16, 8);
    else
#endif
      weighted_sum(acc, row, v_cache, table, length, block_size, num_kv, g, head_dim, bf16, 0);
    for (int d = 0; d < head_dim; d++) store(out, out_base + (int64_t)j * head_dim + d, acc[d], bf16);
  }
  if (scores != local) free(scores);
}

/* Each query row (a decode token, or one token of a prompt: rows of one sequence share its table) against
 * the first lengths[b] cached keys/values of its sequence, found through its block table.
 * q: [batch, q_row_stride] with the heads at column 0; caches: [slots, num_kv, head_dim];
 * out: [batch, num_q * head_dim]. */
void paged_attention_team(const void *q, int64_t q_row_stride, const void *k_cache, const void *v_cache,
                          const int32_t *block_tables, int max_blocks, const int32_t *lengths, int batch, int num_q,
                          int num_kv, int head_dim, int block_size, float scale, void *out, int bf16) {
  int group = num_q / num_kv;
#pragma omp for collapse(2) schedule(dynamic)
  for (int b = 0; b < batch; b++)
    for (int g = 0; g < num_kv; g++) {
      const int32_t *table = block_tables + (int64_t)b * max_blocks;
      int64_t q_base = (int64_t)b * q_row_stride + (int64_t)g * group * head_dim;
      int64_t out_base = (int64_t)b * num_q * head_dim + (int64_t)g * group * head_dim;
      BY_DTYPE(bf16,
               attend_group(q, q_base, k_cache, v_cache, table, lengths[b], group, num_kv, g, head_dim, block_size,
                            scale, out, out_base, 0),
               attend_group(q, q_base, k_cache, v_cache, table, lengths[b], group, num_kv, g, head_dim, block_size,
                            scale, out, out_base, 1));
    }
}
void paged_attention(const void *q, int64_t q_row_stride, const void *k_cache, const void *v_cache,
                     const int32_t *block_tables, int max_blocks, const int32_t *lengths, int batch, int num_q,
                     int num_kv, int head_dim, int block_size, float scale, void *out, int bf16) {
#pragma omp parallel
  paged_attention_team(q, q_row_stride, k_cache, v_cache, block_tables, max_blocks, lengths, batch, num_q, num_kv,
                       head_dim, block_size, scale, out, bf16);
}

/* out[r] = silu(gate) * up where each row of gate_up is [gate | up], `width` each; silu is rounded
 * before the product, as torch's two operations do. */
INLINE void silu_mul_row(const void *gate_up, void *out, int64_t in, int64_t o, int width, int bf16) {
  for (int i = 0; i < width; i++) {
    float g = load(gate_up, in + i, bf16);
    float e = exp_neg(g > 0.f ? -g : g); /* e^-|g| */
    float sigmoid = g > 0.f ? 1.f / (1.f + e) : e / (1.f + e);
    store(out, o + i, as_stored(g * sigmoid, bf16) * load(gate_up, in + width + i, bf16), bf16);
  }
}
void silu_mul_team(const void *gate_up, void *out, int rows, int width, int bf16) {
#pragma omp for schedule(static)
  for (int r = 0; r < rows; r++)
    BY_DTYPE(bf16, silu_mul_row(gate_up, out, (int64_t)r * 2 * width, (int64_t)r * width, width, 0),
             silu_mul_row(gate_up, out, (int64_t)r * 2 * width, (int64_t)r * width, width, 1));
}
void silu_mul(const void *gate_up, void *out, int rows, int width, int bf16) {
#pragma omp parallel if (rows > 8)
  silu_mul_team(gate_up, out, rows, width, bf16);
}
