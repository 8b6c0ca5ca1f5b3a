/* bfloat16 <-> float32 for the CPU kernels, rounding as torch does (to nearest even, NaN stays NaN).
 * Branch-free, so that loops over them vectorize. Also the AVX-512 helpers both kernel files share. */
#ifndef TGI_PY_BF16_H
#define TGI_PY_BF16_H

#include <stdint.h>
#include <string.h>

#ifdef __AVX512F__
#include <immintrin.h>
#endif

#define INLINE static inline __attribute__((always_inline))

INLINE float bf16_to_f32(uint16_t v) {
  uint32_t u = (uint32_t)v << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}

INLINE uint16_t f32_to_bf16(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  uint32_t rounded = (u + 0x7fff + ((u >> 16) & 1)) >> 16;
  uint32_t quiet_nan = (u >> 16) | 0x40; /* truncating a NaN could leave an infinity */
  return (uint16_t)((u & 0x7fffffff) > 0x7f800000 ? quiet_nan : rounded);
}

/* What a bf16 store then load gives: the rounding a torch op applies to its bf16 result. */
INLINE float round_bf16(float f) { return bf16_to_f32(f32_to_bf16(f)); }

#ifdef __AVX512F__
/* 16 bf16 values widened to float32. */
INLINE __m512 load16_bf16(const uint16_t *p) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p)), 16));
}

/* Lane i = the sum of v[i]'s 16 lanes: a transpose-and-add tree, 45 instructions where 16 separate
 * horizontal reductions take ~150 (and each of those is a chain the next cannot overlap). */
INLINE __m512 sum16x16(const __m512 *v) {
  __m512 pairs[8], quads[4], halves[2];
  for (int i = 0; i < 8; i++) /* per 128-bit lane: partial sums of v[2i], v[2i+1], v[2i], v[2i+1] */
    pairs[i] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]), _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]));
  for (int i = 0; i < 4; i++) { /* per 128-bit lane: partial sums of v[4i .. 4i+3] */
    __m512d a = _mm512_castps_pd(pairs[2 * i]), b = _mm512_castps_pd(pairs[2 * i + 1]);
    quads[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(a, b)), _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)));
  }
  for (int i = 0; i < 2; i++) /* 128-bit lanes: quads[2i] twice, then quads[2i+1] twice, each half summed */
    halves[i] = _mm512_add_ps(_mm512_shuffle_f32x4(quads[2 * i], quads[2 * i + 1], 0x88),
                              _mm512_shuffle_f32x4(quads[2 * i], quads[2 * i + 1], 0xdd));
  return _mm512_add_ps(_mm512_shuffle_f32x4(halves[0], halves[1], 0x88),
                       _mm512_shuffle_f32x4(halves[0], halves[1], 0xdd));
}
#endif

#endif
