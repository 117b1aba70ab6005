/* zerostart CPU kernels: reduced-precision matrix products, C = A W, for opt-in bundles.
 *
 * int8 (AVX-512 VNNI, vpdpbusd): W int8 per output channel (scale w_scale[n],
 * symmetric), A quantised per row at run time (dynamic, asymmetric: scale
 * a_scale[m], zero point a_zp[m], to the unsigned bytes vpdpbusd multiplies);
 * the zero point is taken back out with the column sums of W:
 *     C[m,n] = (sum_k qa[m,k] qw[k,n] - a_zp[m] colsum[n]) a_scale[m] w_scale[n]
 * bf16 (AVX-512 BF16, vdpbf16ps): A rounded to bf16 at run time, W stored bf16,
 * products accumulated in float32.
 *
 * Packed weights (written at convert time by zerostart.model.quantize): the N
 * columns in panels of 64 (four vectors of 16), K in groups of G = 4 bytes
 * (int8) or 2 (bf16), so one 64-byte load holds, for 16 columns, the G
 * consecutive k that one lane's dot product consumes:
 *     packed[p][k/G][j][n16][k%G] = W[k, 64p + 16j + n16]      (zero padding)
 * The micro-kernel keeps MR = 6 rows x 64 columns of accumulators (24 zmm) in
 * registers, so each 64-byte load of W feeds 6 dot products; rows are blocked
 * (zs_row_block) so a block of A stays in L2 while every
 * panel of W streams past it.
 *
 * int8 without VNNI (AVX2 builds, vpmaddwd): the same packed weights and the same
 * quantised activations, the activations held as int16 (zs_int8_a_width() = 2) so that
 * each vpmaddwd multiplies 16 int16 pairs exactly into 8 int32: no vpmaddubsw, whose
 * int16 pair sums saturate (255 x 127 x 2 > 32767; ONNX Runtime documents the same
 * hazard). The results are bit-identical to the VNNI kernel's.
 *
 * Compiled only into builds whose -march has the instructions; zs_precisions()
 * says which are present. Sizes are int64; kp is K padded to G, np N to 64.
 */
#include <stdint.h>
#include <string.h>
#include <math.h>

#include "zs_math.h"

#define PRECISION_INT8 1
#define PRECISION_BF16 2
#define PRECISION_F32 4

#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
#define ZS_INT8_VNNI 1
#elif defined(__AVX2__)
#define ZS_INT8_AVX2 1
#endif

int zs_precisions(void) {
    int p = PRECISION_F32; /* every build: zs_gemm_f32.c */
#if defined(ZS_INT8_VNNI) || defined(ZS_INT8_AVX2)
    p |= PRECISION_INT8;
#endif
#if defined(__AVX512BF16__) && defined(__AVX512BW__)
    p |= PRECISION_BF16;
#endif
    return p;
}

#if defined(__AVX512F__)
#include <immintrin.h>

/* Rows of A per block: as many as fit in A_BLOCK_BYTES (half a 1 MiB L2), so every
 * panel of W streamed from L3 is used by that many rows; a multiple of MR. */
#define A_BLOCK_BYTES (512 * 1024)
static inline int64_t zs_row_block(int64_t row_bytes) {
    int64_t mb = A_BLOCK_BYTES / (row_bytes > 0 ? row_bytes : 1);
    mb = mb / 6 * 6;
    return mb < 6 ? 6 : mb;
}
#define MR 6   /* rows per micro-tile: 6 x 4 accumulators + 4 of W + 1 of A = 29 of 32 zmm */

static inline __mmask16 zs_tail_mask(int64_t n) {
    return n >= 16 ? (__mmask16)0xFFFF : n <= 0 ? (__mmask16)0 : (__mmask16)((1u << n) - 1u);
}
#endif

/* A row's asymmetric int8 parameters from its max hi >= 0 and min lo <= 0: the range
 * [lo, hi] onto [0, 255] with 0 exact. Stores the scale and zero point, sets *inv to
 * 1 / scale (what both quantisers multiply by), returns the zero point. */
static inline int32_t zs_row_quant(float hi, float lo, float *scale_out, int32_t *zp_out, float *inv) {
    const float scale = hi > lo ? (hi - lo) / 255.0f : 1.0f;
    *inv = 1.0f / scale;
    int32_t zp = (int32_t)nearbyintf(-lo * *inv);
    zp = zp < 0 ? 0 : (zp > 255 ? 255 : zp);
    *scale_out = scale;
    *zp_out = zp;
    return zp;
}

/* Bytes per element of the quantised activations zs_quantize_u8 writes and zs_gemm_u8s8
 * reads: 1 (unsigned bytes, VNNI) or 2 (the same values 0..255 widened to int16, AVX2). */
int zs_int8_a_width(void) {
#if defined(ZS_INT8_AVX2)
    return 2;
#else
    return 1;
#endif
}

#if defined(ZS_INT8_VNNI)
/* Rows [m0, m1) of x [M, k] -> bytes [M, kp], scales and zero points [M]: asymmetric,
 * x ~= a_scale (q - a_zp), q in [0, 255], the range [min(x, 0), max(x, 0)] mapped onto
 * it so that 0 is exact (GELU outputs are nearly one-sided: this doubles their resolution
 * over a symmetric scale). Padding columns hold a_zp (they meet zero weights anyway). */
void zs_quantize_u8(const float *x, uint8_t *out, float *a_scale, int32_t *a_zp, int64_t m0, int64_t m1, int64_t k,
                    int64_t kp) {
    for (int64_t m = m0; m < m1; m++) {
        const float *row = x + m * k;
        uint8_t *o = out + m * kp;
        __m512 vmax = _mm512_setzero_ps(), vmin = _mm512_setzero_ps();
        for (int64_t c = 0; c < k; c += 16) {
            const __m512 v = _mm512_maskz_loadu_ps(zs_tail_mask(k - c), row + c);
            vmax = _mm512_max_ps(vmax, v);
            vmin = _mm512_min_ps(vmin, v);
        }
        const float hi = _mm512_reduce_max_ps(vmax), lo = _mm512_reduce_min_ps(vmin);
        float inv;
        const int32_t zp = zs_row_quant(hi, lo, a_scale + m, a_zp + m, &inv);
        const __m512 vinv = _mm512_set1_ps(inv);
        const __m512i vzp = _mm512_set1_epi32(zp), zero = _mm512_setzero_si512(), top = _mm512_set1_epi32(255);
        for (int64_t c = 0; c < k; c += 16) {
            const __mmask16 mk = zs_tail_mask(k - c);
            __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_maskz_loadu_ps(mk, row + c), vinv));
            q = _mm512_min_epi32(_mm512_max_epi32(_mm512_add_epi32(q, vzp), zero), top);
            _mm_mask_storeu_epi8(o + c, mk, _mm512_cvtusepi32_epi8(q));
        }
        for (int64_t c = k; c < kp; c++) o[c] = (uint8_t)zp;
    }
}

void zs_gemm_u8s8(const uint8_t *a, const float *a_scale, const int32_t *a_zp, const int8_t *wp, const int32_t *colsum,
                  const float *w_scale, float *c, int64_t m0, int64_t m1, int64_t kp, int64_t n, int64_t np) {
    const int64_t k4 = kp / 4, block = zs_row_block(kp);
    for (int64_t mb = m0; mb < m1; mb += block) {
        const int64_t me = mb + block < m1 ? mb + block : m1;
        for (int64_t p = 0; p < np / 64; p++) {
            const int8_t *bp = wp + p * k4 * 256;
            for (int64_t m = mb; m < me; m += MR) {
                const int64_t rows = me - m < MR ? me - m : MR;
                const uint8_t *ar[MR];
                for (int r = 0; r < MR; r++) ar[r] = a + (m + (r < rows ? r : 0)) * kp;
                __m512i acc[MR][4];
                for (int r = 0; r < MR; r++)
                    for (int j = 0; j < 4; j++) acc[r][j] = _mm512_setzero_si512();
                for (int64_t kk = 0; kk < k4; kk++) {
                    const int8_t *b = bp + kk * 256;
                    const __m512i b0 = _mm512_loadu_si512(b), b1 = _mm512_loadu_si512(b + 64);
                    const __m512i b2 = _mm512_loadu_si512(b + 128), b3 = _mm512_loadu_si512(b + 192);
                    for (int r = 0; r < MR; r++) {
                        int32_t a4;
                        memcpy(&a4, ar[r] + 4 * kk, 4);
                        const __m512i av = _mm512_set1_epi32(a4);
                        acc[r][0] = _mm512_dpbusd_epi32(acc[r][0], av, b0);
                        acc[r][1] = _mm512_dpbusd_epi32(acc[r][1], av, b1);
                        acc[r][2] = _mm512_dpbusd_epi32(acc[r][2], av, b2);
                        acc[r][3] = _mm512_dpbusd_epi32(acc[r][3], av, b3);
                    }
                }
                /* Spill through a buffer with constant indices only: an accumulator array
                 * indexed by a run-time row would be kept in memory inside the k loop. */
                int32_t done[MR * 4 * 16];
                for (int r = 0; r < MR; r++)
                    for (int j = 0; j < 4; j++) _mm512_storeu_si512(done + (r * 4 + j) * 16, acc[r][j]);
                for (int j = 0; j < 4; j++) {
                    const int64_t n0 = p * 64 + j * 16;
                    if (n0 >= n) break;
                    const __mmask16 mk = zs_tail_mask(n - n0);
                    const __m512i cs = _mm512_loadu_si512(colsum + n0);
                    const __m512 ws = _mm512_loadu_ps(w_scale + n0);
                    for (int64_t r = 0; r < rows; r++) {
                        const __m512i corr = _mm512_mullo_epi32(cs, _mm512_set1_epi32(a_zp[m + r]));
                        const __m512i sum = _mm512_loadu_si512(done + (r * 4 + j) * 16);
                        const __m512 v = _mm512_cvtepi32_ps(_mm512_sub_epi32(sum, corr));
                        const __m512 sc = _mm512_mul_ps(ws, _mm512_set1_ps(a_scale[m + r]));
                        _mm512_mask_storeu_ps(c + (m + r) * n + n0, mk, _mm512_mul_ps(v, sc));
                    }
                }
            }
        }
    }
}
#endif

#if defined(__AVX512BF16__) && defined(__AVX512BW__)
/* Rows [m0, m1) of x [M, k] -> bf16 (round to nearest even) [M, kp], zero padding. */
void zs_to_bf16(const float *x, uint16_t *out, int64_t m0, int64_t m1, int64_t k, int64_t kp) {
    for (int64_t m = m0; m < m1; m++) {
        const float *row = x + m * k;
        uint16_t *o = out + m * kp;
        for (int64_t c = 0; c < k; c += 16) {
            const __mmask16 mk = zs_tail_mask(k - c);
            const __m256bh h = _mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(mk, row + c));
            __m256i hi;
            memcpy(&hi, &h, sizeof hi);
            _mm256_mask_storeu_epi16(o + c, mk, hi);
        }
        for (int64_t c = k; c < kp; c++) o[c] = 0;
    }
}

void zs_gemm_bf16(const uint16_t *a, const uint16_t *wp, float *c, int64_t m0, int64_t m1, int64_t kp, int64_t n,
                  int64_t np) {
    const int64_t k2 = kp / 2, block = zs_row_block(2 * kp);
    for (int64_t mb = m0; mb < m1; mb += block) {
        const int64_t me = mb + block < m1 ? mb + block : m1;
        for (int64_t p = 0; p < np / 64; p++) {
            const uint16_t *bp = wp + p * k2 * 128;
            for (int64_t m = mb; m < me; m += MR) {
                const int64_t rows = me - m < MR ? me - m : MR;
                const uint16_t *ar[MR];
                for (int r = 0; r < MR; r++) ar[r] = a + (m + (r < rows ? r : 0)) * kp;
                __m512 acc[MR][4];
                for (int r = 0; r < MR; r++)
                    for (int j = 0; j < 4; j++) acc[r][j] = _mm512_setzero_ps();
                for (int64_t kk = 0; kk < k2; kk++) {
                    const uint16_t *b = bp + kk * 128;
                    __m512bh bv[4];
                    for (int j = 0; j < 4; j++) {
                        const __m512i t = _mm512_loadu_si512(b + 32 * j);
                        memcpy(&bv[j], &t, sizeof t);
                    }
                    for (int r = 0; r < MR; r++) {
                        int32_t a2;
                        memcpy(&a2, ar[r] + 2 * kk, 4);
                        const __m512i ai = _mm512_set1_epi32(a2);
                        __m512bh av;
                        memcpy(&av, &ai, sizeof ai);
                        for (int j = 0; j < 4; j++) acc[r][j] = _mm512_dpbf16_ps(acc[r][j], av, bv[j]);
                    }
                }
                float done[MR * 4 * 16]; /* constant indices only: see zs_gemm_u8s8 */
                for (int r = 0; r < MR; r++)
                    for (int j = 0; j < 4; j++) _mm512_storeu_ps(done + (r * 4 + j) * 16, acc[r][j]);
                for (int j = 0; j < 4; j++) {
                    const int64_t n0 = p * 64 + j * 16;
                    if (n0 >= n) break;
                    const __mmask16 mk = zs_tail_mask(n - n0);
                    for (int64_t r = 0; r < rows; r++)
                        _mm512_mask_storeu_ps(c + (m + r) * n + n0, mk, _mm512_loadu_ps(done + (r * 4 + j) * 16));
                }
            }
        }
    }
}
#endif

#if defined(ZS_INT8_AVX2)
#include <immintrin.h>

/* Rows of A (int16 here) per block: half a 512 KiB L2, as the AVX-512 kernels do. */
static inline int64_t zs_row_block2(int64_t row_bytes) {
    int64_t mb = (256 * 1024) / (row_bytes > 0 ? row_bytes : 1);
    mb = mb / 6 * 6;
    return mb < 6 ? 6 : mb;
}

/* As the VNNI zs_quantize_u8 (same scale, zero point and rounding: vcvtps2dq, nearest
 * even), but each q in [0, 255] is stored as an int16: out is [M, kp] int16. */
void zs_quantize_u8(const float *x, int16_t *out, float *a_scale, int32_t *a_zp, int64_t m0, int64_t m1, int64_t k,
                    int64_t kp) {
    for (int64_t m = m0; m < m1; m++) {
        const float *row = x + m * k;
        int16_t *o = out + m * kp;
        __m256 vmax = _mm256_setzero_ps(), vmin = _mm256_setzero_ps();
        int64_t c = 0;
        for (; c + 8 <= k; c += 8) {
            const __m256 v = _mm256_loadu_ps(row + c);
            vmax = _mm256_max_ps(vmax, v);
            vmin = _mm256_min_ps(vmin, v);
        }
        float hi = zs_hmax256(vmax), lo = zs_hmin256(vmin);
        for (; c < k; c++) {
            hi = row[c] > hi ? row[c] : hi;
            lo = row[c] < lo ? row[c] : lo;
        }
        float inv;
        const int32_t zp = zs_row_quant(hi, lo, a_scale + m, a_zp + m, &inv);
        const __m256 vinv = _mm256_set1_ps(inv);
        const __m256i vzp = _mm256_set1_epi32(zp), zero = _mm256_setzero_si256(), top = _mm256_set1_epi32(255);
        for (c = 0; c + 8 <= k; c += 8) {
            __m256i q = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(row + c), vinv));
            q = _mm256_min_epi32(_mm256_max_epi32(_mm256_add_epi32(q, vzp), zero), top);
            const __m128i w = _mm_packs_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1));
            _mm_storeu_si128((__m128i *)(o + c), w);
        }
        for (; c < k; c++) {
            int32_t q = (int32_t)nearbyintf(row[c] * inv) + zp;
            o[c] = (int16_t)(q < 0 ? 0 : (q > 255 ? 255 : q));
        }
        for (c = k; c < kp; c++) o[c] = (int16_t)zp;
    }
}

#define MR2 6 /* rows per micro-tile: 6 x 2 accumulators + 2 of W + 1 of A = 15 of 16 ymm */

/* One micro-tile: done[r * 8 + j] = sum_k A[r][k] W[k][j] for MR2 rows and 8 columns,
 * exactly in int32. Per group of 4 k, the 32 bytes of W (8 columns x 4 k, packed as for
 * vpdpbusd) are widened (vpmovsxbw) to two vectors of 4 columns x 4 k, and one 8-byte
 * broadcast of a row's 4 activations meets each in a vpmaddwd: per column, two int32 pair
 * sums, added together (vphaddd) once after the k loop. A function of its own, with its
 * loops unrolled by pragma as zs_gemm_f32.c's micro-kernels are: inside the caller's loops
 * gcc kept the accumulators in memory. */
__attribute__((noinline)) static void zs_tile_u8s8_avx2(const int16_t *const ar[MR2], const int8_t *bs, int64_t k4,
                                                         int32_t done[MR2 * 8]) {
    __m256i acc[MR2][2];
    _Pragma("GCC unroll 8") for (int r = 0; r < MR2; r++) acc[r][0] = acc[r][1] = _mm256_setzero_si256();
    for (int64_t kk = 0; kk < k4; kk++) {
        const int8_t *b = bs + kk * 256;
        const __m256i w0 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)b));
        const __m256i w1 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(b + 16)));
        /* One row: broadcast its 4 activations, two vpmaddwd, two vpaddd. In asm so that
         * gcc can neither hoist the six broadcasts above the products (it did, spilling
         * the accumulators) nor keep an accumulator in memory. */
#define ZS_ROW8(r)                                                                             \
    do {                                                                                       \
        __m256i t, u;                                                                          \
        __asm__("vpbroadcastq %[a], %[t]\n\t"                                                   \
                "vpmaddwd %[w0], %[t], %[u]\n\t"                                                \
                "vpmaddwd %[w1], %[t], %[t]\n\t"                                                \
                "vpaddd %[u], %[c0], %[c0]\n\t"                                                 \
                "vpaddd %[t], %[c1], %[c1]"                                                    \
                : [c0] "+x"(acc[r][0]), [c1] "+x"(acc[r][1]), [t] "=&x"(t), [u] "=&x"(u)        \
                : [a] "m"(*(const int64_t *)(ar[r] + 4 * kk)), [w0] "x"(w0), [w1] "x"(w1));    \
    } while (0)
        ZS_ROW8(0);
        ZS_ROW8(1);
        ZS_ROW8(2);
        ZS_ROW8(3);
        ZS_ROW8(4);
        ZS_ROW8(5);
#undef ZS_ROW8
    }
    /* vphaddd adds the pairs within 128-bit lanes ([c0 c1 c4 c5 | c2 c3 c6 c7]); vpermq
     * puts the 64-bit quarters back in column order. */
    _Pragma("GCC unroll 8") for (int r = 0; r < MR2; r++) _mm256_storeu_si256(
        (__m256i *)(done + r * 8), _mm256_permute4x64_epi64(_mm256_hadd_epi32(acc[r][0], acc[r][1]), 0xD8));
}

/* C[m0:m1, :n] from A int16 [M, kp] (zs_quantize_u8 above) and the VNNI layout's packed W,
 * in micro-tiles of MR2 rows x 8 columns (zs_tile_u8s8_avx2). */
void zs_gemm_u8s8(const int16_t *a, const float *a_scale, const int32_t *a_zp, const int8_t *wp, const int32_t *colsum,
                  const float *w_scale, float *c, int64_t m0, int64_t m1, int64_t kp, int64_t n, int64_t np) {
    const int64_t k4 = kp / 4, block = zs_row_block2(kp * 2);
    for (int64_t mb = m0; mb < m1; mb += block) {
        const int64_t me = mb + block < m1 ? mb + block : m1;
        for (int64_t p = 0; p < np / 64; p++) {
            const int8_t *bp = wp + p * k4 * 256;
            for (int64_t s8 = 0; s8 < 8; s8++) { /* 8 columns: j = s8 / 2, half s8 % 2 */
                const int64_t n0 = p * 64 + s8 * 8;
                if (n0 >= n) break;
                const int8_t *bs = bp + (s8 >> 1) * 64 + (s8 & 1) * 32;
                for (int64_t m = mb; m < me; m += MR2) {
                    const int64_t rows = me - m < MR2 ? me - m : MR2;
                    const int16_t *ar[MR2];
                    for (int r = 0; r < MR2; r++) ar[r] = a + (m + (r < rows ? r : 0)) * kp;
                    int32_t done[MR2 * 8];
                    zs_tile_u8s8_avx2(ar, bs, k4, done);
                    const int64_t width = n - n0 < 8 ? n - n0 : 8;
                    const __m256i mk = _mm256_castps_si256(zs_lanes8(width));
                    const __m256i cs = _mm256_loadu_si256((const __m256i *)(colsum + n0));
                    const __m256 ws = _mm256_loadu_ps(w_scale + n0);
                    for (int64_t r = 0; r < rows; r++) {
                        const __m256i corr = _mm256_mullo_epi32(cs, _mm256_set1_epi32(a_zp[m + r]));
                        const __m256i sum = _mm256_loadu_si256((const __m256i *)(done + r * 8));
                        const __m256 v = _mm256_cvtepi32_ps(_mm256_sub_epi32(sum, corr));
                        const __m256 sc = _mm256_mul_ps(ws, _mm256_set1_ps(a_scale[m + r]));
                        _mm256_maskstore_ps(c + (m + r) * n + n0, mk, _mm256_mul_ps(v, sc));
                    }
                }
            }
        }
    }
}
#endif
