/* Math shared by the CPU kernel sources (zs_cpu.c, zs_cpu_gemm.c, zs_deberta.c,
 * zs_modernbert.c): Cephes' expf, Eigen's rational erf, tanh from exp and the two GELUs,
 * all branch-free so the compiler vectorises the loops that call them; on AVX2 builds also
 * an 8-lane exp, horizontal reductions and a lane mask. Static inline: each translation
 * unit gets its own copy, no symbol is exported. */
#ifndef ZS_MATH_H
#define ZS_MATH_H

#include <stdint.h>
#include <string.h>

static inline float zs_bits_to_float(int32_t i) { float f; memcpy(&f, &i, 4); return f; }

/* Cephes expf, vectorisable: clamp, n = round(x log2 e) by the 1.5*2^23 trick,
 * r = x - n ln2 (two-part ln2), polynomial, scale by 2^n built in the exponent bits. */
static inline float zs_expf(float x) {
    x = x < -87.33654f ? -87.33654f : x;
    x = x > 88.37626f ? 88.37626f : x;
    const float shift = 12582912.0f; /* 1.5 * 2^23 */
    float n = (x * 1.44269504088896341f + shift) - shift;
    float r = x - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    float y = p * r * r + r + 1.0f;
    return y * zs_bits_to_float(((int32_t)n + 127) << 23);
}

/* erf(x) ~= x P(x^2) / Q(x^2) on [-4, 4] (Eigen's generic_fast_erf_float). */
static inline float zs_erff(float x) {
    x = x < -4.0f ? -4.0f : x;
    x = x > 4.0f ? 4.0f : x;
    float x2 = x * x;
    float p = -2.72614225801306e-10f;
    p = p * x2 + 2.77068142495902e-08f;
    p = p * x2 + -2.10102402082508e-06f;
    p = p * x2 + -5.69250639462346e-05f;
    p = p * x2 + -7.34990630326855e-04f;
    p = p * x2 + -2.95459980854025e-03f;
    p = p * x2 + -1.60960333262415e-02f;
    float q = -1.45660718464996e-05f;
    q = q * x2 + -2.13374055278905e-04f;
    q = q * x2 + -1.68282697438203e-03f;
    q = q * x2 + -7.37332916720468e-03f;
    q = q * x2 + -1.42647390514189e-02f;
    return x * p / q;
}

static inline float zs_gelu_erf(float x) { return 0.5f * x * (1.0f + zs_erff(x * 0.70710678118654752f)); }

/* tanh(u) = 1 - 2 / (1 + exp(2u)); exp saturates, so |u| large gives +-1. */
static inline float zs_tanhf(float u) { return 1.0f - 2.0f / (1.0f + zs_expf(2.0f * u)); }

static inline float zs_gelu_tanh(float x) {
    float u = 0.7978845608028654f * (x + 0.044715f * x * x * x);
    return 0.5f * x * (1.0f + zs_tanhf(u));
}

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>

/* zs_expf on 8 lanes (AVX2 + FMA): the same clamp, rounding (nearest even), two-part
 * ln2 and polynomial, with FMAs; 2^n built in the exponent bits as zs_expf does. */
static inline __m256 zs_exp256(__m256 x) {
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.33654f)), _mm256_set1_ps(88.37626f));
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    const __m256 y = _mm256_add_ps(_mm256_fmadd_ps(_mm256_mul_ps(p, r), r, r), _mm256_set1_ps(1.0f));
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}

/* Horizontal max / min / sum of 8 lanes. */
static inline float zs_hmax256(__m256 v) {
    __m128 x = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    x = _mm_max_ps(x, _mm_movehl_ps(x, x));
    return _mm_cvtss_f32(_mm_max_ss(x, _mm_movehdup_ps(x)));
}

static inline float zs_hmin256(__m256 v) {
    __m128 x = _mm_min_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    x = _mm_min_ps(x, _mm_movehl_ps(x, x));
    return _mm_cvtss_f32(_mm_min_ss(x, _mm_movehdup_ps(x)));
}

static inline float zs_hsum256(__m256 v) {
    __m128 x = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    x = _mm_add_ps(x, _mm_movehl_ps(x, x));
    return _mm_cvtss_f32(_mm_add_ss(x, _mm_movehdup_ps(x)));
}

/* All ones in lanes [0, n) of 8, zeros after (n may be <= 0 or >= 8). */
static inline __m256 zs_lanes8(int64_t n) {
    const int32_t k = n < 0 ? 0 : (n > 8 ? 8 : (int32_t)n);
    return _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(k), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)));
}
#endif

#endif /* ZS_MATH_H */
