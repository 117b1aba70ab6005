/* zerostart CPU kernels: the fused, vectorised work of a BERT forward pass that
 * numpy does in many single-threaded passes.
 *
 * Theory of operation. One portable C source, compiled once per CPU target at
 * build time (`gcc -O3 -march=x86-64-v3 ...`, see zerostart/kernels/cpu_build.py),
 * like the GPU path's cubins per arch. The inner loops are written so GCC's
 * vectoriser turns them into SSE2 / AVX2 / AVX-512 code for the -march it is
 * given: no branches inside them (selects instead), `#pragma omp simd` on the
 * reductions (-fopenmp-simd: vector pragmas only, no OpenMP runtime), and our
 * own exp / erf so no libm call blocks vectorisation. The int8 (VNNI) and bf16
 * (AVX-512 BF16) matrix products use intrinsics and are compiled only into the
 * builds whose -march has those instructions (zs_cpu_gemm.c).
 *
 * Every kernel works on a range of rows or of (sequence, head) items, so the
 * caller splits the work over threads (ctypes releases the GIL during a call).
 * All arrays are C-contiguous float32 unless said otherwise; sizes are int64.
 *
 * Formulas and their sources:
 *  - GELU (erf form) = x/2 (1 + erf(x/sqrt 2)) (Hendrycks & Gimpel 2016); erf by
 *    the float32 rational approximation Eigen and XLA use (|err| ~ 1e-7).
 *  - GELU (tanh form) = x/2 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
 *  - exp: Cephes expf (range reduction by ln 2 in two parts, degree-5 poly).
 *  - LayerNorm: biased variance, two passes, like torch.nn.LayerNorm.
 *  - Masked softmax: the additive mask of Hugging Face (finfo(float32).min on
 *    padding keys), max-subtracted.
 *  - tanh(x) = 1 - 2 / (1 + exp(2x)) on zs_expf (the BERT pooler's activation).
 *  - Sentence vectors: sentence-transformers' Pooling (CLS token, or the mean of
 *    the tokens), an optional Matryoshka cut to the first `dims` values, then
 *    torch.nn.functional.normalize: x / max(||x||_2, 1e-12).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>

#define ZS_ABI_VERSION 5

#define ACT_NONE 0
#define ACT_GELU_ERF 1
#define ACT_GELU_TANH 2
#define ACT_RELU 3
#define ACT_TANH 4 /* the BERT pooler's */

int zs_abi_version(void) { return ZS_ABI_VERSION; }

#include "zs_math.h"

/* x[r, :] = act(x[r, :] + bias) for r in [0, rows). */
void zs_bias_act(float *x, const float *bias, int64_t rows, int64_t cols, int act) {
    for (int64_t r = 0; r < rows; r++) {
        float *row = x + r * cols;
        switch (act) {
        case ACT_GELU_ERF:
#pragma omp simd
            for (int64_t c = 0; c < cols; c++) row[c] = zs_gelu_erf(row[c] + bias[c]);
            break;
        case ACT_GELU_TANH:
#pragma omp simd
            for (int64_t c = 0; c < cols; c++) row[c] = zs_gelu_tanh(row[c] + bias[c]);
            break;
        case ACT_RELU:
#pragma omp simd
            for (int64_t c = 0; c < cols; c++) {
                float v = row[c] + bias[c];
                row[c] = v > 0.0f ? v : 0.0f;
            }
            break;
        case ACT_TANH:
#pragma omp simd
            for (int64_t c = 0; c < cols; c++) row[c] = zs_tanhf(row[c] + bias[c]);
            break;
        default:
#pragma omp simd
            for (int64_t c = 0; c < cols; c++) row[c] += bias[c];
        }
    }
}

static inline void zs_layer_norm_row(float *row, const float *gamma, const float *beta, int64_t n, float eps) {
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int64_t c = 0; c < n; c++) sum += row[c];
    float mean = sum / (float)n;
    float sq = 0.0f;
#pragma omp simd reduction(+ : sq)
    for (int64_t c = 0; c < n; c++) {
        float d = row[c] - mean;
        sq += d * d;
    }
    float rstd = 1.0f / sqrtf(sq / (float)n + eps);
#pragma omp simd
    for (int64_t c = 0; c < n; c++) row[c] = (row[c] - mean) * rstd * gamma[c] + beta[c];
}

/* x[r] = LayerNorm(x[r] + bias + residual[r]) (post-LN residual block), in place. */
void zs_bias_residual_layernorm(float *x, const float *residual, const float *bias, const float *gamma,
                                const float *beta, int64_t rows, int64_t cols, float eps) {
    for (int64_t r = 0; r < rows; r++) {
        float *row = x + r * cols;
        const float *res = residual + r * cols;
#pragma omp simd
        for (int64_t c = 0; c < cols; c++) row[c] = (row[c] + bias[c]) + res[c];
        zs_layer_norm_row(row, gamma, beta, cols, eps);
    }
}

/* Rows [row0, row1) of the embeddings: LayerNorm(word[ids] + position[t] + type[types]).
 * ids/types: int64 [B*T] (types may be NULL: token type 0, or no table at all). */
void zs_embed_layernorm(float *out, const int64_t *ids, const int64_t *types, const float *word,
                        const float *position, const float *type_table, const float *gamma, const float *beta,
                        int64_t row0, int64_t row1, int64_t seq_len, int64_t hidden, float eps) {
    for (int64_t r = row0; r < row1; r++) {
        float *row = out + r * hidden;
        const float *w = word + ids[r] * hidden;
        const float *p = position + (r % seq_len) * hidden;
#pragma omp simd
        for (int64_t c = 0; c < hidden; c++) row[c] = w[c] + p[c];
        if (type_table) {
            const float *ty = type_table + (types ? types[r] : 0) * hidden;
#pragma omp simd
            for (int64_t c = 0; c < hidden; c++) row[c] += ty[c];
        }
        zs_layer_norm_row(row, gamma, beta, hidden, eps);
    }
}

/* Attention for items [item0, item1) of the B x heads (sequence, head) pairs.
 *
 * qkv: [B*T, 3H] projections without bias (bias added here; the query block
 * was pre-scaled by 1/sqrt(d) at convert time); qkv_bias [3H]; mask_bias
 * [B, T] additive (0 or finfo.min) or NULL; ctx: [B*T, H] output, head h in
 * columns h*d .. h*d+d. Per item, K^T and V (+ bias) are copied into a
 * scratch block padded to whole vectors (zeros), which stays in L1/L2 with
 * the scores of QR query rows, so the T x T score matrix never exists in
 * memory. Both products are register-tiled: on AVX-512 and AVX2 builds with
 * intrinsics, on the portable build as QR rows x VB columns of accumulators
 * that GCC's vectoriser turns into SSE code.
 * Returns 0, or -1 when the scratch block cannot be allocated.
 */
#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#include <immintrin.h>

/* Builds with intrinsics: the algorithm once, in zs_attention_simd.h, over the operations
 * below. GCC's vectoriser kept the generic tiles' accumulators on the stack, and under
 * -std=c11 may not contract a*b+c into an FMA, so the generic code ran at half the FMA
 * rate (AVX-512, Zen 4: intrinsics took 25 % off attention; AVX2, Zen 3: 26-37 %). */
#if defined(__AVX512F__)
/* 8 query rows x 32 keys or columns: 16 accumulators of 32 zmm. */
#define ZA_V __m512
#define ZA_W 16
#define ZA_QR 8

/* zs_expf's formula on 16 lanes: Cephes polynomial, 2^n applied by scalef. */
static inline __m512 zs_exp512(__m512 x) {
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.33654f)), _mm512_set1_ps(88.37626f));
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    const __m512 y = _mm512_add_ps(_mm512_fmadd_ps(_mm512_mul_ps(p, r), r, r), _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(y, n);
}

static inline __mmask16 zs_mask16(int64_t n) {
    return n >= 16 ? (__mmask16)0xFFFF : n <= 0 ? (__mmask16)0 : (__mmask16)((1u << n) - 1u);
}
#define ZA_LOAD _mm512_load_ps
#define ZA_STORE _mm512_store_ps
#define ZA_STOREU _mm512_storeu_ps
#define ZA_LOADU _mm512_loadu_ps
#define ZA_LOADN(p, n) _mm512_maskz_loadu_ps(zs_mask16(n), (p))
#define ZA_STOREN(p, n, x) _mm512_mask_storeu_ps((p), zs_mask16(n), (x))
#define ZA_SET1 _mm512_set1_ps
#define ZA_ZERO _mm512_setzero_ps
#define ZA_ADD _mm512_add_ps
#define ZA_SUB _mm512_sub_ps
#define ZA_MUL _mm512_mul_ps
#define ZA_MAX _mm512_max_ps
#define ZA_FMA _mm512_fmadd_ps
#define ZA_BCAST(p) _mm512_set1_ps(*(p))
#define ZA_EXP zs_exp512
#define ZA_KEEP(x, n) _mm512_maskz_mov_ps(zs_mask16(n), (x))
#define ZA_MAXN(x, n) _mm512_mask_mov_ps(_mm512_set1_ps(-INFINITY), zs_mask16(n), (x))
#define ZA_HMAX _mm512_reduce_max_ps
#define ZA_HSUM _mm512_reduce_add_ps
#else
/* 6 query rows x 16 keys or columns: 12 accumulators, 2 vectors of K or V, 1 broadcast
 * of 16 ymm. zs_exp256, zs_lanes8 and the horizontal reductions are zs_math.h's. */
#define ZA_V __m256
#define ZA_W 8
#define ZA_QR 6

/* Lanes [0, n) only: a whole vector when n >= 8; else a masked load, and a store through
 * a buffer (vmaskmovps stores are microcoded on AMD Zen: a maskstore per row cost 10-18 %). */
static inline __m256 zs_loadn256(const float *p, int64_t n) {
    return n >= 8 ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, _mm256_castps_si256(zs_lanes8(n)));
}

static inline void zs_storen256(float *p, int64_t n, __m256 x) {
    if (n >= 8) {
        _mm256_storeu_ps(p, x);
    } else if (n > 0) {
        float buf[8];
        _mm256_storeu_ps(buf, x);
        memcpy(p, buf, (size_t)n * sizeof(float));
    }
}
#define ZA_LOAD _mm256_load_ps
#define ZA_STORE _mm256_store_ps
#define ZA_STOREU _mm256_storeu_ps
#define ZA_LOADU _mm256_loadu_ps
#define ZA_LOADN zs_loadn256
#define ZA_STOREN zs_storen256
#define ZA_SET1 _mm256_set1_ps
#define ZA_ZERO _mm256_setzero_ps
#define ZA_ADD _mm256_add_ps
#define ZA_SUB _mm256_sub_ps
#define ZA_MUL _mm256_mul_ps
#define ZA_MAX _mm256_max_ps
#define ZA_FMA _mm256_fmadd_ps
#define ZA_BCAST _mm256_broadcast_ss
#define ZA_EXP zs_exp256
#define ZA_KEEP(x, n) _mm256_and_ps(zs_lanes8(n), (x))
#define ZA_MAXN(x, n) _mm256_blendv_ps(_mm256_set1_ps(-INFINITY), (x), zs_lanes8(n))
#define ZA_HMAX zs_hmax256
#define ZA_HSUM zs_hsum256
#endif
#include "zs_attention_simd.h"
#else
#define QR 4  /* query rows per tile */
#define VB 16 /* columns per tile: two AVX2 vectors, four SSE */

int zs_attention(const float *qkv, const float *qkv_bias, const float *mask_bias, float *ctx, int64_t seq_len,
                 int64_t heads, int64_t head_dim, int64_t item0, int64_t item1) {
    const int64_t t_len = seq_len, d = head_dim, h = heads * head_dim, stride = 3 * h;
    const int64_t tp = (t_len + VB - 1) / VB * VB, dp = (d + VB - 1) / VB * VB;
    float *kt = (float *)calloc((size_t)(d * tp + tp * dp + QR * tp + QR * d + QR * dp), sizeof(float));
    if (!kt) return -1;
    float *v = kt + d * tp;  /* [tp, dp], rows >= T and columns >= d are zero */
    float *s = v + tp * dp;  /* [QR, tp] scores, then probabilities */
    float *q = s + QR * tp;  /* [QR, d] */
    float *o = q + QR * d;   /* [QR, dp] */
    for (int64_t item = item0; item < item1; item++) {
        const int64_t b = item / heads, hd = item % heads;
        const float *base = qkv + b * t_len * stride;
        const float *kb = qkv_bias + h + hd * d, *vb = qkv_bias + 2 * h + hd * d, *qb = qkv_bias + hd * d;
        const float *mb = mask_bias ? mask_bias + b * t_len : NULL;
        for (int64_t j = 0; j < t_len; j++) {
            const float *kr = base + j * stride + h + hd * d, *vr = base + j * stride + 2 * h + hd * d;
            for (int64_t k = 0; k < d; k++) kt[k * tp + j] = kr[k] + kb[k];
#pragma omp simd
            for (int64_t k = 0; k < d; k++) v[j * dp + k] = vr[k] + vb[k];
        }
        for (int64_t i0 = 0; i0 < t_len; i0 += QR) {
            const int64_t rows = t_len - i0 < QR ? t_len - i0 : QR;
            for (int64_t r = 0; r < QR; r++) {
                const float *qr = base + (i0 + (r < rows ? r : 0)) * stride + hd * d;
#pragma omp simd
                for (int64_t k = 0; k < d; k++) q[r * d + k] = qr[k] + qb[k];
            }
            for (int64_t j0 = 0; j0 < tp; j0 += VB) {
                float acc[QR][VB] = {{0}};
                for (int64_t k = 0; k < d; k++) {
                    const float *kr = kt + k * tp + j0;
                    for (int r = 0; r < QR; r++) {
                        const float qk = q[r * d + k];
#pragma omp simd
                        for (int jj = 0; jj < VB; jj++) acc[r][jj] += qk * kr[jj];
                    }
                }
                for (int r = 0; r < QR; r++)
#pragma omp simd
                    for (int jj = 0; jj < VB; jj++) s[r * tp + j0 + jj] = acc[r][jj];
            }
            for (int r = 0; r < QR; r++) {
                float *sr = s + r * tp;
                if (mb) {
#pragma omp simd
                    for (int64_t j = 0; j < t_len; j++) sr[j] += mb[j];
                }
                float m = sr[0];
#pragma omp simd reduction(max : m)
                for (int64_t j = 0; j < t_len; j++) m = sr[j] > m ? sr[j] : m;
                float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
                for (int64_t j = 0; j < t_len; j++) {
                    float e = zs_expf(sr[j] - m);
                    sr[j] = e;
                    sum += e;
                }
                const float inv = 1.0f / sum;
#pragma omp simd
                for (int64_t j = 0; j < t_len; j++) sr[j] *= inv;
                for (int64_t j = t_len; j < tp; j++) sr[j] = 0.0f;
            }
            for (int64_t c0 = 0; c0 < dp; c0 += VB) {
                float acc[QR][VB] = {{0}};
                for (int64_t j = 0; j < t_len; j++) {
                    const float *vr = v + j * dp + c0;
                    for (int r = 0; r < QR; r++) {
                        const float pj = s[r * tp + j];
#pragma omp simd
                        for (int cc = 0; cc < VB; cc++) acc[r][cc] += pj * vr[cc];
                    }
                }
                for (int r = 0; r < QR; r++)
#pragma omp simd
                    for (int cc = 0; cc < VB; cc++) o[r * dp + c0 + cc] = acc[r][cc];
            }
            for (int64_t r = 0; r < rows; r++) {
                float *out = ctx + (b * t_len + i0 + r) * h + hd * d;
#pragma omp simd
                for (int64_t k = 0; k < d; k++) out[k] = o[r * dp + k];
            }
        }
    }
    free(kt);
    return 0;
}

#endif

/* Masked mean pooling (sentence-transformers' pooling_mode_mean_tokens):
 * out[b] = sum_t mask[b,t] hidden[b,t] / max(sum_t mask[b,t], 1e-9), b in [b0, b1). */
void zs_mean_pool(const float *hidden, const int64_t *mask, float *out, int64_t b0, int64_t b1, int64_t seq_len,
                  int64_t hidden_size) {
    for (int64_t b = b0; b < b1; b++) {
        float *o = out + b * hidden_size;
        float count = 0.0f;
#pragma omp simd
        for (int64_t c = 0; c < hidden_size; c++) o[c] = 0.0f;
        for (int64_t t = 0; t < seq_len; t++) {
            const float w = (float)mask[b * seq_len + t];
            if (w == 0.0f) continue;
            count += w;
            const float *row = hidden + (b * seq_len + t) * hidden_size;
#pragma omp simd
            for (int64_t c = 0; c < hidden_size; c++) o[c] += w * row[c];
        }
        const float inv = 1.0f / (count > 1e-9f ? count : 1e-9f);
#pragma omp simd
        for (int64_t c = 0; c < hidden_size; c++) o[c] *= inv;
    }
}

/* -- task heads: the serving path's work after the encoder (no numpy on it) ---------- */

#define POOL_CLS 0
#define POOL_MEAN 1
#define NORMALIZE_EPS 1e-12f /* torch.nn.functional.normalize's default */

/* One sequence's final states [tokens, hidden] -> its sentence vector out[dims]:
 * the CLS token or the mean of all tokens (a sequence's own rows: no padding), cut to
 * the first `dims` values (Matryoshka; dims == hidden keeps all), then L2-normalised
 * when `normalize`. Returns 0, or -1 when the vector is not finite (NaN or infinity:
 * broken weights), -2 for bad sizes. */
int zs_pool_vector(const float *states, int64_t tokens, int64_t hidden, int mode, int normalize, int64_t dims,
                   float *out) {
    if (tokens < 1 || dims < 1 || dims > hidden) return -2;
    if (mode == POOL_CLS) {
        memcpy(out, states, (size_t)dims * sizeof(float));
    } else {
#pragma omp simd
        for (int64_t c = 0; c < dims; c++) out[c] = 0.0f;
        for (int64_t t = 0; t < tokens; t++) {
            const float *row = states + t * hidden;
#pragma omp simd
            for (int64_t c = 0; c < dims; c++) out[c] += row[c];
        }
        const float inv = 1.0f / (float)tokens;
#pragma omp simd
        for (int64_t c = 0; c < dims; c++) out[c] *= inv;
    }
    float sq = 0.0f;
#pragma omp simd reduction(+ : sq)
    for (int64_t c = 0; c < dims; c++) sq += out[c] * out[c];
    if (!isfinite(sq)) {
        float any = 0.0f; /* a huge but finite vector overflows sq: look at the values */
        for (int64_t c = 0; c < dims; c++) any += out[c] * 0.0f;
        if (any != 0.0f) return -1; /* NaN or infinity somewhere (x * 0 is NaN for those) */
    }
    if (normalize) {
        float norm = sqrtf(sq);
        if (!isfinite(norm)) { /* finite values whose squares overflow: scale first */
            float m = 0.0f;
            for (int64_t c = 0; c < dims; c++) m = fabsf(out[c]) > m ? fabsf(out[c]) : m;
            float s2 = 0.0f;
            for (int64_t c = 0; c < dims; c++) s2 += (out[c] / m) * (out[c] / m);
            norm = m * sqrtf(s2);
        }
        const float inv = 1.0f / (norm > NORMALIZE_EPS ? norm : NORMALIZE_EPS);
#pragma omp simd
        for (int64_t c = 0; c < dims; c++) out[c] *= inv;
    }
    return 0;
}

/* out[r] = softmax(x[r]) over `cols`, max-subtracted, for r in [0, rows) (token
 * classification scores, as transformers' pipeline computes them in float32). */
void zs_softmax_rows(const float *x, float *out, int64_t rows, int64_t cols) {
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * cols;
        float *o = out + r * cols;
        float m = xr[0];
        for (int64_t c = 1; c < cols; c++) m = xr[c] > m ? xr[c] : m;
        float sum = 0.0f;
        for (int64_t c = 0; c < cols; c++) {
            o[c] = expf(xr[c] - m);
            sum += o[c];
        }
        for (int64_t c = 0; c < cols; c++) o[c] /= sum;
    }
}

/* out[r] = x[r * stride] for r in [0, rows): rows of `cols` floats, `stride` rows apart
 * (the [CLS] row of every sequence of a batch, for the classification head). */
void zs_copy_rows(const float *x, float *out, int64_t rows, int64_t stride, int64_t cols) {
    for (int64_t r = 0; r < rows; r++) memcpy(out + r * cols, x + r * stride * cols, (size_t)cols * sizeof(float));
}
