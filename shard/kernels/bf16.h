/* bfloat16 <-> float32 for the CPU kernels, rounding as torch does (to nearest even, NaN stays NaN).
 * Branch-free, so that loops over them vectorize. */
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
#endif

#endif
