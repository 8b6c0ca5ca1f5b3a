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
                      int N, int K) {
  f32x16 acc[ROWS][XB];
  for (int r = 0; r < ROWS; r++)
    for (int j = 0; j < XB; j++) acc[r][j] = ZERO_F32();
  int k = 0;
  for (; k + 16 <= K; k += 16) {
    f32x16 xv[XB];
    for (int j = 0; j < nb; j++) xv[j] = LOAD_F32(x + (int64_t)j * K + k);
    prefetch_next_block(w + (int64_t)ROWS * K, k / 16);
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
      y[(int64_t)j * N + n0 + r] = s + (bias ? bias[n0 + r] : 0.f);
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
      if (rows == ROWS && nb == XB) BLOCK(xb, wr, bias, yb, XB, ROWS, n0, N, K); \
      else if (rows == ROWS && nb == 1) BLOCK(xb, wr, bias, yb, 1, ROWS, n0, N, K); \
      else if (rows == ROWS && nb == 2) BLOCK(xb, wr, bias, yb, 2, ROWS, n0, N, K); \
      else BLOCK(xb, wr, bias, yb, nb, rows, n0, N, K);                          \
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
                       int n0, int N, int K) {
  int k = 0;
#ifdef __AVX512BF16__
  __m512 acc[ROWS][XB];
  for (int r = 0; r < ROWS; r++)
    for (int j = 0; j < XB; j++) acc[r][j] = _mm512_setzero_ps();
  for (; k + BF16_STEP <= K; k += BF16_STEP) {
    __m512bh xv[XB];
    for (int j = 0; j < nb; j++) xv[j] = (__m512bh)_mm512_loadu_si512(x + (int64_t)j * K + k);
    prefetch_next_block(w + (int64_t)ROWS * K, k / BF16_STEP);
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
    prefetch_next_block(w + (int64_t)ROWS * K, k / BF16_STEP);
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
      y[(int64_t)j * N + n0 + r] = f32_to_bf16(s + (bias ? bf16_to_f32(bias[n0 + r]) : 0.f));
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

/* Which paths this build has, for logs and tests: bit 0 AVX-512F, bit 1 AVX512-BF16, bit 2 AVX2. */
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
  return f;
}
