/* Small-batch matrix-vector products for CPU decoding: y[b, n] = sum_k x[b, k] * w[n, k] + bias[n].
 *
 * Decoding multiplies a handful of rows by every weight matrix once per step, so the step is bound by
 * reading the weights from memory. BLAS libraries tune for large products: on a 2-core AVX-512 machine
 * MKL reaches ~16 GB/s at batch 1 and gets slower with every added row. Here each thread streams its
 * share of weight rows once and multiplies them into up to four input rows while they sit in L1.
 *
 * w is the checkpoint's [N, K] row-major layout. Written with GCC vector extensions so that
 * -march=native picks AVX-512, AVX2 or SSE; bf16 uses the AVX512-BF16 dot product where the CPU has it.
 * Built and loaded at run time by shard/kernels/cpu.py (OpenMP: torch's runtime, already loaded).
 */

#ifndef ROWS
/* weight rows per block: 6 x XB accumulators, XB inputs and a weight vector fit the 32 AVX-512 registers
 * (with 8 rows the compiler spilled accumulators to the stack inside the k loop) */
#define ROWS 6
#endif
#define XB 4   /* input rows per block; GEMV_ROWS below is written out for 1..4 */

#include "bf16.h"

#ifdef __AVX512F__
typedef __m512 f32x16;
#define LOAD_F32(p) _mm512_loadu_ps(p)
#define ZERO_F32() _mm512_setzero_ps()
#define FMA_F32(a, b, acc) _mm512_fmadd_ps(a, b, acc)
#define SUM_F32(v) _mm512_reduce_add_ps(v)
#else
typedef float f32x16 __attribute__((vector_size(64)));
#define LOAD_F32(p) load_f32(p)
#define ZERO_F32() ((f32x16){0})
#define FMA_F32(a, b, acc) ((acc) + (a) * (b))
#define SUM_F32(v) sum16(v)
#endif
typedef float g32x16 __attribute__((vector_size(64)));
typedef uint32_t u32x16 __attribute__((vector_size(64)));
typedef uint16_t u16x16 __attribute__((vector_size(32)));

INLINE g32x16 load_f32(const float *p) { g32x16 v; memcpy(&v, p, sizeof v); return v; }
INLINE float sum16(g32x16 v) {
  float s = 0.f;
  for (int i = 0; i < 16; i++) s += v[i];
  return s;
}
INLINE g32x16 load_bf16(const uint16_t *p) {
  u16x16 h; memcpy(&h, p, sizeof h);
  u32x16 wide = __builtin_convertvector(h, u32x16) << 16;
  g32x16 v; memcpy(&v, &wide, sizeof v); return v;
}

#ifdef __AVX512F__
#define BLOCK_SUMS ((ROWS * XB + 15) / 16 * 16)
/* A block's ROWS x XB dot products from their accumulators, 16 at a time: sums[r * XB + j]. */
INLINE void block_sums(__m512 acc[ROWS][XB], float *sums) {
  for (int base = 0; base < ROWS * XB; base += 16) {
    __m512 v[16];
    for (int i = 0; i < 16; i++)
      v[i] = base + i < ROWS * XB ? acc[(base + i) / XB][(base + i) % XB] : _mm512_setzero_ps();
    _mm512_storeu_ps(sums + base, sum16x16(v));
  }
}
#endif

/* The hardware prefetcher does not ramp up on rows of ~1-2 KB read ROWS at a time; fetching the next
 * block's lines while this block is multiplied does (bf16 batch 1: 13.5 -> 11.5 ms per SmolLM2 step). A
 * block is ROWS whole rows, contiguous: iteration i of the k loop asks for its i-th ROWS lines. */
INLINE void prefetch_next_block(const void *block_end, int iteration) {
  const char *next = (const char *)block_end + (int64_t)iteration * 64 * ROWS;
  for (int r = 0; r < ROWS; r++) __builtin_prefetch(next + 64 * r, 0, 3);
}

INLINE void f32_block(const float *x, const float *w, const float *bias, float *y, int nb, int rows, int n0,
                      int N, int K, const void *prefetch, const float *scales) {
  f32x16 acc[ROWS][XB];
  for (int r = 0; r < ROWS; r++)
    for (int j = 0; j < XB; j++) acc[r][j] = ZERO_F32();
  int k = 0;
  for (; k + 16 <= K; k += 16) {
    f32x16 xv[XB];
    for (int j = 0; j < nb; j++) xv[j] = LOAD_F32(x + (int64_t)j * K + k);
    if (prefetch) prefetch_next_block(prefetch, k / 16);
    for (int r = 0; r < rows; r++) {
      f32x16 wv = LOAD_F32(w + (int64_t)r * K + k);
      for (int j = 0; j < nb; j++) acc[r][j] = FMA_F32(wv, xv[j], acc[r][j]);
    }
  }
#ifdef __AVX512F__
  float sums[BLOCK_SUMS];
  block_sums(acc, sums);
#define F32_SUM(r, j) sums[(r) * XB + (j)]
#else
#define F32_SUM(r, j) SUM_F32(acc[r][j])
#endif
  for (int r = 0; r < rows; r++)
    for (int j = 0; j < nb; j++) {
      float s = F32_SUM(r, j);
      for (int t = k; t < K; t++) s += x[(int64_t)j * K + t] * w[(int64_t)r * K + t];
      y[(int64_t)j * N + n0 + r] = s * (scales ? scales[n0 + r] : 1.f) + (bias ? bias[n0 + r] : 0.f);
    }
#undef F32_SUM
}

/* Each thread of the enclosing team takes whole blocks of ROWS weight rows (static schedule: contiguous
 * ones, so prefetching the next block helps) and multiplies them into the input rows XB at a time.
 * Constant block sizes let the compiler keep every accumulator in a register. A worksharing loop, not a
 * parallel region: the *_team functions run inside one (the fused decode step's, or their wrapper's). */
#define GEMV_BLOCKS(T, BLOCK)                                                    \
  _Pragma("omp for schedule(static)")                                            \
  for (int n0 = 0; n0 < N; n0 += ROWS) {                                         \
    int rows = N - n0 < ROWS ? N - n0 : ROWS;                                    \
    const T *wr = w + (int64_t)n0 * K;                                           \
    for (int b = 0; b < B; b += XB) {                                            \
      int nb = B - b < XB ? B - b : XB;                                          \
      const T *xb = x + (int64_t)b * K;                                          \
      T *yb = y + (int64_t)b * N;                                                \
      const T *next = wr + (int64_t)ROWS * K; /* the next block's lines, fetched while this one multiplies */ \
      if (rows == ROWS && nb == XB) BLOCK(xb, wr, bias, yb, XB, ROWS, n0, N, K, next, NULL); \
      else if (rows == ROWS && nb == 1) BLOCK(xb, wr, bias, yb, 1, ROWS, n0, N, K, next, NULL); \
      else if (rows == ROWS && nb == 2) BLOCK(xb, wr, bias, yb, 2, ROWS, n0, N, K, next, NULL); \
      else BLOCK(xb, wr, bias, yb, nb, rows, n0, N, K, next, NULL);              \
    }                                                                            \
  }

/* Up to XB input rows (a constant per call, so that the accumulators stay in registers): each thread reads
 * its contiguous share of weight rows one row after the other, start to end, so the whole share is one
 * sequential stream the hardware prefetcher follows across rows and pages (the blocks above read ROWS
 * rows side by side: ROWS short streams it does not ramp up on). A SmolLM2 step's 121 matrices at batch 1
 * in bf16: 13 -> 8-11 ms in a C microbenchmark (20 -> 25-33 GB/s). Past XB input rows the blocks win
 * again: they load each weight once for XB inputs and each input once for ROWS weight rows, and the step
 * is no longer bound by the weights' bandwidth. */
#define GEMV_ROWS(T, ROW)                                                        \
  _Pragma("omp for schedule(static)")                                            \
  for (int n = 0; n < N; n++) {                                                  \
    const T *wn = w + (int64_t)n * K;                                            \
    if (B == 1) ROW(x, wn, bias, y, 1, n, N, K);                                 \
    else if (B == 2) ROW(x, wn, bias, y, 2, n, N, K);                            \
    else if (B == 3) ROW(x, wn, bias, y, 3, n, N, K);                            \
    else ROW(x, wn, bias, y, 4, n, N, K);                                        \
  }

INLINE void f32_row(const float *x, const float *w, const float *bias, float *y, int nb, int n, int N, int K) {
  f32x16 acc[XB][2];
  for (int j = 0; j < XB; j++) acc[j][0] = acc[j][1] = ZERO_F32();
  int k = 0;
  for (; k + 32 <= K; k += 32) {
    f32x16 w0 = LOAD_F32(w + k), w1 = LOAD_F32(w + k + 16);
    for (int j = 0; j < nb; j++) {
      acc[j][0] = FMA_F32(w0, LOAD_F32(x + (int64_t)j * K + k), acc[j][0]);
      acc[j][1] = FMA_F32(w1, LOAD_F32(x + (int64_t)j * K + k + 16), acc[j][1]);
    }
  }
  for (; k + 16 <= K; k += 16) {
    f32x16 w0 = LOAD_F32(w + k);
    for (int j = 0; j < nb; j++) acc[j][0] = FMA_F32(w0, LOAD_F32(x + (int64_t)j * K + k), acc[j][0]);
  }
  for (int j = 0; j < nb; j++) {
    float s = SUM_F32(acc[j][0] + acc[j][1]);
    for (int t = k; t < K; t++) s += x[(int64_t)j * K + t] * w[t];
    y[(int64_t)j * N + n] = s + (bias ? bias[n] : 0.f);
  }
}

void gemv_f32_team(const float *x, const float *w, const float *bias, float *y, int B, int N, int K) {
  /* B == 0 (a prompt chunk that wants no logits) takes the blocks, which do nothing */
  if (B >= 1 && B <= XB) {
    GEMV_ROWS(float, f32_row)
  } else {
    GEMV_BLOCKS(float, f32_block)
  }
}
void gemv_f32(const float *x, const float *w, const float *bias, float *y, int B, int N, int K) {
#pragma omp parallel
  gemv_f32_team(x, w, bias, y, B, N, K);
}

#ifdef __AVX512BF16__
#define BF16_STEP 32
#else
#define BF16_STEP 16
#endif

INLINE void bf16_block(const uint16_t *x, const uint16_t *w, const uint16_t *bias, uint16_t *y, int nb, int rows,
                       int n0, int N, int K, const void *prefetch, const float *scales) {
  int k = 0;
#ifdef __AVX512BF16__
  __m512 acc[ROWS][XB];
  for (int r = 0; r < ROWS; r++)
    for (int j = 0; j < XB; j++) acc[r][j] = _mm512_setzero_ps();
  for (; k + BF16_STEP <= K; k += BF16_STEP) {
    __m512bh xv[XB];
    for (int j = 0; j < nb; j++) xv[j] = (__m512bh)_mm512_loadu_si512(x + (int64_t)j * K + k);
    if (prefetch) prefetch_next_block(prefetch, k / BF16_STEP);
    for (int r = 0; r < rows; r++) {
      __m512bh wv = (__m512bh)_mm512_loadu_si512(w + (int64_t)r * K + k);
      for (int j = 0; j < nb; j++) acc[r][j] = _mm512_dpbf16_ps(acc[r][j], wv, xv[j]);
    }
  }
  float sums[BLOCK_SUMS];
  block_sums(acc, sums);
#define BF16_SUM(r, j) sums[(r) * XB + (j)]
#else
  g32x16 acc[ROWS][XB] = {0};
  for (; k + BF16_STEP <= K; k += BF16_STEP) {
    g32x16 xv[XB];
    for (int j = 0; j < nb; j++) xv[j] = load_bf16(x + (int64_t)j * K + k);
    if (prefetch) prefetch_next_block(prefetch, k / BF16_STEP);
    for (int r = 0; r < rows; r++) {
      g32x16 wv = load_bf16(w + (int64_t)r * K + k);
      for (int j = 0; j < nb; j++) acc[r][j] += wv * xv[j];
    }
  }
#define BF16_SUM(r, j) sum16(acc[r][j])
#endif
  for (int r = 0; r < rows; r++)
    for (int j = 0; j < nb; j++) {
      float s = BF16_SUM(r, j);
      for (int t = k; t < K; t++) s += bf16_to_f32(x[(int64_t)j * K + t]) * bf16_to_f32(w[(int64_t)r * K + t]);
      y[(int64_t)j * N + n0 + r] =
          f32_to_bf16(s * (scales ? scales[n0 + r] : 1.f) + (bias ? bf16_to_f32(bias[n0 + r]) : 0.f));
    }
#undef BF16_SUM
}

INLINE void bf16_row(const uint16_t *x, const uint16_t *w, const uint16_t *bias, uint16_t *y, int nb, int n, int N,
                     int K) {
  int k = 0;
#ifdef __AVX512BF16__
  __m512 acc[XB][2];
  for (int j = 0; j < XB; j++) acc[j][0] = acc[j][1] = _mm512_setzero_ps();
  for (; k + 2 * BF16_STEP <= K; k += 2 * BF16_STEP) {
    __m512bh w0 = (__m512bh)_mm512_loadu_si512(w + k), w1 = (__m512bh)_mm512_loadu_si512(w + k + BF16_STEP);
    for (int j = 0; j < nb; j++) {
      acc[j][0] = _mm512_dpbf16_ps(acc[j][0], w0, (__m512bh)_mm512_loadu_si512(x + (int64_t)j * K + k));
      acc[j][1] = _mm512_dpbf16_ps(acc[j][1], w1, (__m512bh)_mm512_loadu_si512(x + (int64_t)j * K + k + BF16_STEP));
    }
  }
  for (; k + BF16_STEP <= K; k += BF16_STEP) {
    __m512bh w0 = (__m512bh)_mm512_loadu_si512(w + k);
    for (int j = 0; j < nb; j++)
      acc[j][0] = _mm512_dpbf16_ps(acc[j][0], w0, (__m512bh)_mm512_loadu_si512(x + (int64_t)j * K + k));
  }
#else
  g32x16 acc[XB][2] = {0};
  for (; k + 2 * BF16_STEP <= K; k += 2 * BF16_STEP) {
    g32x16 w0 = load_bf16(w + k), w1 = load_bf16(w + k + BF16_STEP);
    for (int j = 0; j < nb; j++) {
      acc[j][0] += w0 * load_bf16(x + (int64_t)j * K + k);
      acc[j][1] += w1 * load_bf16(x + (int64_t)j * K + k + BF16_STEP);
    }
  }
  for (; k + BF16_STEP <= K; k += BF16_STEP) {
    g32x16 w0 = load_bf16(w + k);
    for (int j = 0; j < nb; j++) acc[j][0] += w0 * load_bf16(x + (int64_t)j * K + k);
  }
#endif
  for (int j = 0; j < nb; j++) {
#ifdef __AVX512BF16__
    float s = _mm512_reduce_add_ps(acc[j][0] + acc[j][1]);
#else
    float s = sum16(acc[j][0] + acc[j][1]);
#endif
    for (int t = k; t < K; t++) s += bf16_to_f32(x[(int64_t)j * K + t]) * bf16_to_f32(w[t]);
    y[(int64_t)j * N + n] = f32_to_bf16(s + (bias ? bf16_to_f32(bias[n]) : 0.f));
  }
}

void gemv_bf16_team(const uint16_t *x, const uint16_t *w, const uint16_t *bias, uint16_t *y, int B, int N, int K) {
  /* B == 0 (a prompt chunk that wants no logits) takes the blocks, which do nothing */
  if (B >= 1 && B <= XB) {
    GEMV_ROWS(uint16_t, bf16_row)
  } else {
    GEMV_BLOCKS(uint16_t, bf16_block)
  }
}
void gemv_bf16(const uint16_t *x, const uint16_t *w, const uint16_t *bias, uint16_t *y, int B, int N, int K) {
#pragma omp parallel
  gemv_bf16_team(x, w, bias, y, B, N, K);
}

/* ---- Weight-only quantized weights (shard/quantization.py), dequantized in registers ------------------
 *
 * int8: w[N, K] int8 with a float32 scale per row (weight = scale[n] * q). int4: groups of 32 weights of a
 * row, each with an fp16 scale d and minimum m (weight = d * q + m, q in 0..15): GGUF's block_q4_1, with
 * a row's G = ceil(K / 32) blocks stored as two runs, first the G x 16 bytes of nibbles (byte i of a
 * group: weight i in the low nibble, weight i + 16 in the high one), then the G (d, m) pairs. The
 * scales of a row are then widened 16 at a time before its loop, where one block at a time cost six
 * operations per group. A partial last group is padded with zeros. Activations, bias and output are
 * float32 or bf16, as the model's; the arithmetic is float32.
 *
 * Up to XB input rows each weight row is dequantized once, in registers, and multiplied into every input
 * row (float32 FMAs), streaming the rows one after the other as the float kernels do: the step reads
 * 1/2 (int8) or ~5/16 (int4) of the bf16 bytes. More input rows than that: ROWS weight rows at a time
 * are dequantized into a small per-thread tile in the model's dtype, which the float block kernels
 * above then multiply into all input rows (the dequantization is paid once per tile, not per input).
 */
#ifdef __F16C__
#include <immintrin.h>
#endif
#include <stdlib.h>

typedef int8_t i8x16 __attribute__((vector_size(16)));
typedef uint8_t u8x16 __attribute__((vector_size(16)));
typedef int32_t i32x16 __attribute__((vector_size(64)));

#define Q4_GROUP 32
#define Q4_BLOCK 20
#define QCHUNK 16 /* weight rows per chunk of the row kernels: one transposed reduction each */

INLINE float f16_to_f32(const uint8_t *p) {
  uint16_t h = (uint16_t)(p[0] | (p[1] << 8));
#ifdef __F16C__
  return _cvtsh_ss(h);
#else
  uint32_t sign = (uint32_t)(h & 0x8000) << 16, exponent = (h >> 10) & 0x1f, mantissa = h & 0x3ff, u;
  if (exponent == 0) { /* zero or subnormal: mantissa * 2^-24 */
    float f = (float)mantissa * (1.0f / 16777216.0f);
    memcpy(&u, &f, 4);
    u |= sign;
  } else if (exponent == 31) {
    u = sign | 0x7f800000u | (mantissa << 13);
  } else {
    u = sign | ((exponent + 112) << 23) | (mantissa << 13);
  }
  float f;
  memcpy(&f, &u, 4);
  return f;
#endif
}

#ifdef __AVX512F__
#define HSUM(v) _mm512_reduce_add_ps((__m512)(v))
#else
#define HSUM(v) sum16(v)
#endif

INLINE float q_load(const void *p, int64_t i, int bf16) {
  return bf16 ? bf16_to_f32(((const uint16_t *)p)[i]) : ((const float *)p)[i];
}
INLINE void q_store(void *p, int64_t i, float v, int bf16) {
  if (bf16) ((uint16_t *)p)[i] = f32_to_bf16(v);
  else ((float *)p)[i] = v;
}

/* Per-thread scratch (0: the input rows as float32, 1: a dequantized tile, 2: quantized input rows), grown as needed, kept. */
static __thread char *scratch_buffer[3];
static __thread size_t scratch_bytes[3];
static void *scratch(int which, size_t bytes) {
  if (bytes > scratch_bytes[which]) {
    free(scratch_buffer[which]);
    size_t size = (bytes + 4095) & ~(size_t)4095;
    scratch_buffer[which] = aligned_alloc(64, size);
    scratch_bytes[which] = scratch_buffer[which] ? size : 0;
  }
  return scratch_buffer[which];
}

/* The input rows as float32: x itself, or (bf16) this thread's widened copy. */
static const float *rows_as_f32(const void *x, int64_t count, int bf16) {
  if (!bf16) return (const float *)x;
  float *out = scratch(0, (size_t)count * sizeof(float));
  const uint16_t *h = (const uint16_t *)x;
  for (int64_t i = 0; i < count; i++) out[i] = bf16_to_f32(h[i]);
  return out;
}

/* 16 int8 weights widened to float32. (GCC 12 turns __builtin_convertvector from 8-bit lanes into 16
 * scalar conversions: the AVX-512 build says what it means.) */
INLINE g32x16 load_i8(const int8_t *p) {
#ifdef __AVX512F__
  return (g32x16)_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)p)));
#else
  i8x16 v;
  memcpy(&v, p, sizeof v);
  return __builtin_convertvector(v, g32x16);
#endif
}

/* A group's 32 weights from its 16 bytes of nibbles: lo = weights 0-15, hi = 16-31, each d * q + m (one
 * rounding). With AVX-512 the group's 16 possible values are computed once (one FMA) and each nibble picks
 * its own (a permute, which reads only the low 4 bits of its index). */
INLINE void q4_dequant(const uint8_t *nibbles, float d, float m, g32x16 *lo, g32x16 *hi) {
#ifdef __AVX512F__
  const __m512 levels = _mm512_setr_ps(0.f, 1.f, 2.f, 3.f, 4.f, 5.f, 6.f, 7.f, 8.f, 9.f, 10.f, 11.f, 12.f, 13.f,
                                       14.f, 15.f);
  __m512i q = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)nibbles));
  __m512 table = _mm512_fmadd_ps(levels, _mm512_set1_ps(d), _mm512_set1_ps(m));
  *lo = (g32x16)_mm512_permutexvar_ps(q, table);
  *hi = (g32x16)_mm512_permutexvar_ps(_mm512_srli_epi32(q, 4), table);
#else
  u8x16 b;
  memcpy(&b, nibbles, sizeof b);
  i32x16 q = __builtin_convertvector(b, i32x16);
  *lo = __builtin_convertvector(q & 15, g32x16) * d + m;
  *hi = __builtin_convertvector(q >> 4, g32x16) * d + m;
#endif
}

/* A row's G (d, m) pairs as float32: dm[2g] = d, dm[2g + 1] = m. */
INLINE void q4_scales(const uint8_t *row, int G, float *dm) {
  const uint8_t *h = row + (int64_t)G * 16;
#if defined(__AVX512F__) && defined(__AVX512BW__)
  for (int i = 0; i < 2 * G; i += 16) { /* the last 16 masked: no scalar conversions, no read past the row */
    __mmask16 keep = 2 * G - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (2 * G - i)) - 1);
    _mm512_mask_storeu_ps(dm + i, keep, _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(keep, h + 2 * i)));
  }
#else
  for (int i = 0; i < 2 * G; i++) dm[i] = f16_to_f32(h + 2 * i);
#endif
}

/* Weight t of an int4 row of K (for the tail of a K that is not a multiple of 32). */
INLINE float q4_at(const uint8_t *row, int K, int t) {
  int G = (K + Q4_GROUP - 1) / Q4_GROUP, g = t / Q4_GROUP, i = t % Q4_GROUP;
  uint8_t b = row[(int64_t)g * 16 + (i & 15)];
  const uint8_t *dm = row + (int64_t)G * 16 + 4 * g;
  return (float)(i < 16 ? b & 15 : b >> 4) * f16_to_f32(dm) + f16_to_f32(dm + 2);
}

INLINE int64_t q4_row_bytes(int K) { return (int64_t)((K + Q4_GROUP - 1) / Q4_GROUP) * Q4_BLOCK; }

/* Four accumulators per input row: with two, each FMA waited for the previous one on its chain (4
 * cycles) and a row of int8 or int4 weights took as long as its bf16 row, whatever the bytes. */
/* The row kernels leave, for each input row j, the row's dot product as a vector of 16 partial sums
 * (part[j][r]) and a scalar for a K not a multiple of the vector step (tail[j][r]): QROWS_CHUNKED sums 16
 * rows' vectors at once (sum16x16), where a horizontal sum per row was ~10 of the ~70 operations that a
 * row costs besides its groups. Four accumulators per input row: with two, each FMA waited for the
 * previous one on its chain. */
INLINE void q8_row(const float *x, const int8_t *w, int nb, int K, g32x16 part[XB][QCHUNK],
                   float tail[XB][QCHUNK], int r) {
  g32x16 acc[XB][4];
  for (int j = 0; j < nb; j++) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = (g32x16){0};
  int k = 0;
  for (; k + 64 <= K; k += 64) {
    g32x16 w0 = load_i8(w + k), w1 = load_i8(w + k + 16), w2 = load_i8(w + k + 32), w3 = load_i8(w + k + 48);
    for (int j = 0; j < nb; j++) {
      const float *xj = x + (int64_t)j * K + k;
      acc[j][0] += w0 * load_f32(xj);
      acc[j][1] += w1 * load_f32(xj + 16);
      acc[j][2] += w2 * load_f32(xj + 32);
      acc[j][3] += w3 * load_f32(xj + 48);
    }
  }
  for (; k + 16 <= K; k += 16) {
    g32x16 w0 = load_i8(w + k);
    for (int j = 0; j < nb; j++) acc[j][0] += w0 * load_f32(x + (int64_t)j * K + k);
  }
  for (int j = 0; j < nb; j++) {
    float s = 0.f;
    for (int t = k; t < K; t++) s += x[(int64_t)j * K + t] * (float)w[t];
    part[j][r] = (acc[j][0] + acc[j][1]) + (acc[j][2] + acc[j][3]);
    tail[j][r] = s;
  }
}

INLINE void q4_row(const float *x, const uint8_t *w, int nb, int K, g32x16 part[XB][QCHUNK], float tail[XB][QCHUNK],
                   int r) {
  int G = (K + Q4_GROUP - 1) / Q4_GROUP;
  float dm[2 * G];
  q4_scales(w, G, dm);
  g32x16 acc[XB][4];
  for (int j = 0; j < nb; j++) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = (g32x16){0};
  int k = 0, g = 0;
  for (; k + 2 * Q4_GROUP <= K; k += 2 * Q4_GROUP, g += 2) {
    g32x16 lo0, hi0, lo1, hi1;
    q4_dequant(w + (int64_t)g * 16, dm[2 * g], dm[2 * g + 1], &lo0, &hi0);
    q4_dequant(w + (int64_t)g * 16 + 16, dm[2 * g + 2], dm[2 * g + 3], &lo1, &hi1);
    for (int j = 0; j < nb; j++) {
      const float *xj = x + (int64_t)j * K + k;
      acc[j][0] += lo0 * load_f32(xj);
      acc[j][1] += hi0 * load_f32(xj + 16);
      acc[j][2] += lo1 * load_f32(xj + 32);
      acc[j][3] += hi1 * load_f32(xj + 48);
    }
  }
  for (; k + Q4_GROUP <= K; k += Q4_GROUP, g++) {
    g32x16 lo, hi;
    q4_dequant(w + (int64_t)g * 16, dm[2 * g], dm[2 * g + 1], &lo, &hi);
    for (int j = 0; j < nb; j++) {
      acc[j][0] += lo * load_f32(x + (int64_t)j * K + k);
      acc[j][1] += hi * load_f32(x + (int64_t)j * K + k + 16);
    }
  }
  for (int j = 0; j < nb; j++) {
    float s = 0.f;
    for (int t = k; t < K; t++) s += x[(int64_t)j * K + t] * q4_at(w, K, t);
    part[j][r] = (acc[j][0] + acc[j][1]) + (acc[j][2] + acc[j][3]);
    tail[j][r] = s;
  }
}

/* ---- int8 activations (AVX512-VNNI): up to XB input rows -------------------------------------------------
 *
 * Dequantizing in registers costs ~7 vector operations per 32 int4 weights, so a one-row step read its
 * int4 weights at half the bandwidth the machine gives. With VNNI a weight row meets the input rows as
 * integers instead: each input row is quantized once per call to int8 in blocks of 32 (scale da =
 * absmax / 127, as GGUF's Q8_1, so a block's scale is its own and a row's result does not depend on the
 * rows beside it), and vpdpbusd multiplies 64 unsigned 8-bit weights by 64 signed 8-bit activations into
 * 16 int32 sums in one operation. int4 (q in 0..15): sum_k (d q_k + m) da a_k = d da sum(q a) + m da sum(a),
 * the second term a per-row dot product over groups. int8 (signed): the weights are biased by 128 (an
 * exclusive or) to be unsigned, and 128 * da * sum(a) per block is taken off at the end. A partial group
 * or block is padded with zero activations, so no scalar tail is left.
 */
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
#define INT8_ACTIVATIONS 1

/* One quantized input row. Blocks are padded to a multiple of 16 (one vector of scales). int4 reads the
 * activations split as its nibbles are (lo: each block's first 16 values, hi: its last 16); int8 reads
 * them in order, with each block's scale repeated over the 8 int32 lanes its 32 products land in. */
typedef struct {
  int8_t *lo, *hi;   /* [blocks * 16] each (int4) */
  int8_t *q;         /* [blocks * 32] (int8) */
  float *da, *sa;    /* [blocks]: scale, scale * sum of the block's integers */
  float *lanes;      /* [blocks * 8] (int8) */
  float bias_sum;    /* 128 * sum of sa (int8's correction) */
} QuantizedRow;

/* Quantizes rows x [B, K] (float32) into this thread's scratch. */
static void quantize_rows(const float *x, int B, int K, QuantizedRow rows[XB]) {
  int blocks = ((K + Q4_GROUP - 1) / Q4_GROUP + 15) / 16 * 16;
  size_t per_row = (size_t)blocks * (16 + 16 + 32 + 4 + 4 + 32);
  char *base = scratch(2, per_row * (size_t)B);
  for (int j = 0; j < B; j++) {
    char *p = base + per_row * (size_t)j;
    QuantizedRow *row = &rows[j];
    row->lanes = (float *)p; p += (size_t)blocks * 32;
    row->da = (float *)p; p += (size_t)blocks * 4;
    row->sa = (float *)p; p += (size_t)blocks * 4;
    row->q = (int8_t *)p; p += (size_t)blocks * 32;
    row->lo = (int8_t *)p; p += (size_t)blocks * 16;
    row->hi = (int8_t *)p;
    const float *xj = x + (int64_t)j * K;
    float bias_sum = 0.f;
    for (int b = 0; b < blocks; b++) {
      int k = b * Q4_GROUP, valid = K - k < 0 ? 0 : (K - k > 32 ? 32 : K - k);
      __mmask16 m0 = valid >= 16 ? 0xffff : (__mmask16)((1u << valid) - 1);
      __mmask16 m1 = valid <= 16 ? 0 : (valid >= 32 ? 0xffff : (__mmask16)((1u << (valid - 16)) - 1));
      __m512 v0 = _mm512_maskz_loadu_ps(m0, xj + k), v1 = _mm512_maskz_loadu_ps(m1, xj + k + 16);
      float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
      float inv = amax > 0.f ? 127.f / amax : 0.f;
      __m512i q0 = _mm512_cvtps_epi32(_mm512_mul_ps(v0, _mm512_set1_ps(inv)));
      __m512i q1 = _mm512_cvtps_epi32(_mm512_mul_ps(v1, _mm512_set1_ps(inv)));
      __m128i b0 = _mm512_cvtsepi32_epi8(q0), b1 = _mm512_cvtsepi32_epi8(q1);
      _mm_storeu_si128((__m128i *)(row->lo + 16 * b), b0);
      _mm_storeu_si128((__m128i *)(row->hi + 16 * b), b1);
      _mm_storeu_si128((__m128i *)(row->q + 32 * b), b0);
      _mm_storeu_si128((__m128i *)(row->q + 32 * b + 16), b1);
      float da = amax / 127.f;
      float sa = da * (float)_mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
      row->da[b] = da;
      row->sa[b] = sa;
      _mm256_storeu_ps(row->lanes + 8 * b, _mm256_set1_ps(da));
      bias_sum += sa;
    }
    row->bias_sum = 128.f * bias_sum;
  }
}

INLINE __mmask64 first_bytes(int n) { return n >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << n) - 1); }

/* An int4 row (see the layout above) against nb quantized input rows: four groups (64 bytes) a step. */
INLINE void q4_row_int8(const QuantizedRow *xq, const uint8_t *w, int nb, int K, g32x16 part[XB][QCHUNK],
                        float tail[XB][QCHUNK], int r) {
  int G = (K + Q4_GROUP - 1) / Q4_GROUP;
  const uint8_t *h = w + (int64_t)G * 16;
  const __m512i low4 = _mm512_set1_epi8(0x0f);
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
  /* lane l of a four-group step belongs to group l / 4 */
  const __m512i spread = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
  __m512 acc[XB][2];
  for (int j = 0; j < nb; j++) acc[j][0] = acc[j][1] = _mm512_setzero_ps();
  for (int g0 = 0; g0 < G; g0 += 16) {
    int n16 = G - g0 < 16 ? G - g0 : 16; /* groups in this window, as (d, m) pairs: 2 * n16 halves */
    __mmask16 k0 = 2 * n16 >= 16 ? 0xffff : (__mmask16)((1u << (2 * n16)) - 1);
    __mmask16 k1 = 2 * n16 <= 16 ? 0 : (2 * n16 >= 32 ? 0xffff : (__mmask16)((1u << (2 * n16 - 16)) - 1));
    __m512 p0 = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(k0, h + 4 * g0));
    __m512 p1 = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(k1, h + 4 * g0 + 32));
    __m512 d = _mm512_permutex2var_ps(p0, even, p1), m = _mm512_permutex2var_ps(p0, odd, p1);
    __m512 sd[XB];
    for (int j = 0; j < nb; j++) {
      sd[j] = _mm512_mul_ps(d, _mm512_loadu_ps(xq[j].da + g0));
      acc[j][1] = _mm512_fmadd_ps(m, _mm512_loadu_ps(xq[j].sa + g0), acc[j][1]);
    }
    for (int c = 0; c < n16; c += 4) {
      int g = g0 + c;
      const uint8_t *src = w + (int64_t)g * 16;
      __m512i bytes = G - g >= 4 ? _mm512_loadu_si512(src) : _mm512_maskz_loadu_epi8(first_bytes(16 * (G - g)), src);
      __m512i lo = _mm512_and_si512(bytes, low4), hi = _mm512_and_si512(_mm512_srli_epi16(bytes, 4), low4);
      __m512i index = _mm512_add_epi32(spread, _mm512_set1_epi32(c));
      for (int j = 0; j < nb; j++) {
        __m512i t = _mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, _mm512_loadu_si512(xq[j].lo + 16 * g));
        t = _mm512_dpbusd_epi32(t, hi, _mm512_loadu_si512(xq[j].hi + 16 * g));
        acc[j][0] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(t), _mm512_permutexvar_ps(index, sd[j]), acc[j][0]);
      }
    }
  }
  for (int j = 0; j < nb; j++) {
    part[j][r] = (g32x16)_mm512_add_ps(acc[j][0], acc[j][1]);
    tail[j][r] = 0.f;
  }
}

/* An int8 row against nb quantized input rows: 64 weights a step, 8 int32 lanes per block of 32. */
INLINE void q8_row_int8(const QuantizedRow *xq, const int8_t *w, int nb, int K, g32x16 part[XB][QCHUNK],
                        float tail[XB][QCHUNK], int r) {
  const __m512i flip = _mm512_set1_epi8((char)0x80);
  __m512 acc[XB][2];
  for (int j = 0; j < nb; j++) acc[j][0] = acc[j][1] = _mm512_setzero_ps();
  int step = 0;
  for (int k = 0; k < K; k += 64, step ^= 1) {
    __m512i bytes = K - k >= 64 ? _mm512_loadu_si512(w + k) : _mm512_maskz_loadu_epi8(first_bytes(K - k), w + k);
    __m512i u = _mm512_xor_si512(bytes, flip);
    for (int j = 0; j < nb; j++) {
      __m512i t = _mm512_dpbusd_epi32(_mm512_setzero_si512(), u, _mm512_loadu_si512(xq[j].q + k));
      acc[j][step] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(t), _mm512_loadu_ps(xq[j].lanes + k / 4), acc[j][step]);
    }
  }
  for (int j = 0; j < nb; j++) {
    part[j][r] = (g32x16)_mm512_add_ps(acc[j][0], acc[j][1]);
    tail[j][r] = -xq[j].bias_sum;
  }
}
#endif

/* Whether the row kernels quantize their input rows to int8 (where the build has VNNI); set_int8_activations(0)
 * keeps them in float32, for comparisons. */
static int int8_activations = 1;
void set_int8_activations(int on) { int8_activations = on; }

/* y[j, c0 + r] = (sum of part[j][r] + tail[j][r]) * scale + bias for the chunk's rows. */
static void finish_chunk(g32x16 part[XB][QCHUNK], float tail[XB][QCHUNK], int rows, int c0, int B, int N,
                         const float *scales, const void *bias, void *y, int bf16) {
  for (int j = 0; j < B; j++) {
    float sums[QCHUNK];
#ifdef __AVX512F__
    for (int r = rows; r < QCHUNK; r++) part[j][r] = (g32x16){0};
    _mm512_storeu_ps(sums, sum16x16((const __m512 *)part[j]));
#else
    for (int r = 0; r < rows; r++) sums[r] = HSUM(part[j][r]);
#endif
    for (int r = 0; r < rows; r++) {
      int n = c0 + r;
      float v = (sums[r] + tail[j][r]) * (scales ? scales[n] : 1.f) + (bias ? q_load(bias, n, bf16) : 0.f);
      q_store(y, (int64_t)j * N + n, v, bf16);
    }
  }
}

INLINE void store16(void *tile, int64_t i, g32x16 v, int bf16) {
  if (!bf16) {
    memcpy((float *)tile + i, &v, sizeof v);
    return;
  }
#ifdef __AVX512BF16__
  _mm256_storeu_si256((__m256i *)((uint16_t *)tile + i), (__m256i)_mm512_cvtneps_pbh((__m512)v));
#else
  for (int l = 0; l < 16; l++) ((uint16_t *)tile)[i + l] = f32_to_bf16(v[l]);
#endif
}

/* Rows n0 .. n0 + rows of the weight, dequantized into tile [rows, K] (float32 or bf16). scales NULL: the
 * integers themselves (exact in bf16 too), for a block kernel that applies each row's scale to its sums. */
static void q8_tile(const int8_t *w, const float *scales, int n0, int rows, int K, void *tile, int bf16) {
  for (int r = 0; r < rows; r++) {
    const int8_t *wr = w + (int64_t)(n0 + r) * K;
    float s = scales ? scales[n0 + r] : 1.f;
    int64_t base = (int64_t)r * K;
    int k = 0;
    if (scales)
      for (; k + 16 <= K; k += 16) store16(tile, base + k, load_i8(wr + k) * s, bf16);
    else
      for (; k + 16 <= K; k += 16) store16(tile, base + k, load_i8(wr + k), bf16);
    for (; k < K; k++) q_store(tile, base + k, (float)wr[k] * s, bf16);
  }
}
static void q4_tile(const uint8_t *w, int n0, int rows, int K, void *tile, int bf16) {
  int64_t stride = q4_row_bytes(K);
  int G = (K + Q4_GROUP - 1) / Q4_GROUP;
  float dm[2 * G];
  for (int r = 0; r < rows; r++) {
    const uint8_t *wr = w + (int64_t)(n0 + r) * stride;
    q4_scales(wr, G, dm);
    int64_t base = (int64_t)r * K;
    int k = 0, g = 0;
    for (; k + Q4_GROUP <= K; k += Q4_GROUP, g++) {
      g32x16 lo, hi;
      q4_dequant(wr + (int64_t)g * 16, dm[2 * g], dm[2 * g + 1], &lo, &hi);
      store16(tile, base + k, lo, bf16);
      store16(tile, base + k + 16, hi, bf16);
    }
    for (; k < K; k++) q_store(tile, base + k, q4_at(wr, K, k), bf16);
  }
}

/* ROWS weight rows at a time: dequantize them into this thread's tile, then the float block kernel
 * multiplies the tile into every input row, XB at a time. */
#define QTILE_BLOCKS(T, BLOCK, DEQUANT, NEXT, SCALES)                                                 \
  _Pragma("omp for schedule(static)")                                                   \
  for (int n0 = 0; n0 < N; n0 += ROWS) {                                                \
    int rows = N - n0 < ROWS ? N - n0 : ROWS;                                           \
    T *tile = scratch(1, (size_t)ROWS * K * sizeof(T));                                 \
    DEQUANT;                                                                            \
    const T *tb = (const T *)bias;                                                      \
    for (int b = 0; b < B; b += XB) {                                                   \
      int nb = B - b < XB ? B - b : XB;                                                 \
      const T *xb = (const T *)x + (int64_t)b * K;                                      \
      T *yb = (T *)y + (int64_t)b * N;                                                  \
      const void *next = b == 0 ? NEXT : NULL; /* the next tile's quantized rows, once */ \
      if (rows == ROWS && nb == XB) BLOCK(xb, tile, tb, yb, XB, ROWS, n0, N, K, next, SCALES); \
      else if (rows == ROWS && nb == 1) BLOCK(xb, tile, tb, yb, 1, ROWS, n0, N, K, next, SCALES); \
      else if (rows == ROWS && nb == 2) BLOCK(xb, tile, tb, yb, 2, ROWS, n0, N, K, next, SCALES); \
      else BLOCK(xb, tile, tb, yb, nb, rows, n0, N, K, next, SCALES);                   \
    }                                                                                   \
  }

/* Up to XB input rows: each thread streams its contiguous share of weight rows (GEMV_ROWS above), in
 * chunks of QCHUNK rows; ROW is a row kernel, X its input rows, WROW weight row n. */
#define QROWS_CHUNKED(ROW, X, WROW, SCALES)                                 \
  _Pragma("omp for schedule(static)")                                       \
  for (int c0 = 0; c0 < N; c0 += QCHUNK) {                                  \
    int rows = N - c0 < QCHUNK ? N - c0 : QCHUNK;                           \
    g32x16 part[XB][QCHUNK];                                                \
    float tail[XB][QCHUNK];                                                 \
    for (int r = 0; r < rows; r++) {                                        \
      int n = c0 + r;                                                       \
      if (B == 1) ROW(X, WROW, 1, K, part, tail, r);                        \
      else if (B == 2) ROW(X, WROW, 2, K, part, tail, r);                   \
      else if (B == 3) ROW(X, WROW, 3, K, part, tail, r);                   \
      else ROW(X, WROW, 4, K, part, tail, r);                               \
    }                                                                       \
    finish_chunk(part, tail, rows, c0, B, N, SCALES, bias, y, bf16);        \
  }

/* The input rows quantized to int8 for ROW_INT8 where the build has it and it is on, else as float32 for
 * ROW_F32 (every thread takes the same branch: the worksharing loop is met by the whole team). */
#ifdef INT8_ACTIVATIONS
#define QROWS(ROW_INT8, ROW_F32, WROW, SCALES)                              \
  {                                                                         \
    const float *xf = rows_as_f32(x, (int64_t)B * K, bf16);                 \
    if (int8_activations) {                                                 \
      QuantizedRow xq[XB];                                                  \
      quantize_rows(xf, B, K, xq);                                          \
      QROWS_CHUNKED(ROW_INT8, xq, WROW, SCALES)                             \
    } else {                                                                \
      QROWS_CHUNKED(ROW_F32, xf, WROW, SCALES)                              \
    }                                                                       \
  }
#else
#define QROWS(ROW_INT8, ROW_F32, WROW, SCALES)                              \
  {                                                                         \
    const float *xf = rows_as_f32(x, (int64_t)B * K, bf16);                 \
    QROWS_CHUNKED(ROW_F32, xf, WROW, SCALES)                                \
  }
#endif

void gemv_q8_team(const void *x, const int8_t *w, const float *scales, const void *bias, void *y, int B, int N,
                  int K, int bf16) {
  if (B <= 0) return; /* no rows (a prompt chunk that wants no logits): every thread returns, no barrier */
  if (B <= XB) {
    QROWS(q8_row_int8, q8_row, w + (int64_t)n * K, scales)
  } else if (bf16) {
    QTILE_BLOCKS(uint16_t, bf16_block, q8_tile(w, NULL, n0, rows, K, tile, 1), w + (int64_t)(n0 + ROWS) * K, scales)
  } else {
    QTILE_BLOCKS(float, f32_block, q8_tile(w, NULL, n0, rows, K, tile, 0), w + (int64_t)(n0 + ROWS) * K, scales)
  }
}
void gemv_q8(const void *x, const int8_t *w, const float *scales, const void *bias, void *y, int B, int N, int K,
             int bf16) {
#pragma omp parallel
  gemv_q8_team(x, w, scales, bias, y, B, N, K, bf16);
}

void gemv_q4_team(const void *x, const uint8_t *w, const void *bias, void *y, int B, int N, int K, int bf16) {
  if (B <= 0) return;
  int64_t stride = q4_row_bytes(K);
  if (B <= XB) {
    QROWS(q4_row_int8, q4_row, w + (int64_t)n * stride, NULL)
  } else if (bf16) {
    QTILE_BLOCKS(uint16_t, bf16_block, q4_tile(w, n0, rows, K, tile, 1), w + (n0 + ROWS) * stride, NULL)
  } else {
    QTILE_BLOCKS(float, f32_block, q4_tile(w, n0, rows, K, tile, 0), w + (n0 + ROWS) * stride, NULL)
  }
}
void gemv_q4(const void *x, const uint8_t *w, const void *bias, void *y, int B, int N, int K, int bf16) {
#pragma omp parallel
  gemv_q4_team(x, w, bias, y, B, N, K, bf16);
}

/* Dequantizes a whole int4 or int8 matrix into out [N, K] (float32 or bf16): the weight that torch's
 * matmul takes for prompt chunks too large for the kernels above. */
void dequantize_q8(const int8_t *w, const float *scales, void *out, int N, int K, int bf16) {
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; n++) q8_tile(w, scales, n, 1, K, (char *)out + (int64_t)n * K * (bf16 ? 2 : 4), bf16);
}
void dequantize_q4(const uint8_t *w, void *out, int N, int K, int bf16) {
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; n++) q4_tile(w, n, 1, K, (char *)out + (int64_t)n * K * (bf16 ? 2 : 4), bf16);
}

/* Which paths this build has, for logs and tests: bit 0 AVX-512F, bit 1 AVX512-BF16, bit 2 AVX2, bit 3 the
 * int8-activation row kernels (AVX512-VNNI). */
int kernel_features(void) {
  int f = 0;
#ifdef __AVX512F__
  f |= 1;
#endif
#ifdef __AVX512BF16__
  f |= 2;
#endif
#ifdef __AVX2__
  f |= 4;
#endif
#ifdef INT8_ACTIVATIONS
  f |= 8;
#endif
  return f;
}
