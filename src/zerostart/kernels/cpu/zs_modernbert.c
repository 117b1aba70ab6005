/* zerostart CPU kernels for ModernBERT: the operations a BERT does not have.
 *
 * Theory of operation. Compiled into the same library as zs_cpu.c (one build per CPU
 * target, zerostart/kernels/cpu_build.py), written the same way: plain C whose inner
 * loops GCC vectorises for the -march it is given (`#pragma omp simd`, selects instead
 * of branches), each kernel working on a range of rows or of (sequence, head) items so
 * the caller splits the work over threads. The layer they serve, in order
 * (zerostart/bundle/modernbert_layout.py; transformers' modeling_modernbert.py):
 *
 *   h = LN(x)                  zs_mb_norm / zs_mb_residual_norm: LayerNorm without bias
 *   qkv = h Wqkv               zs_gemm_f32 (no bias: ModernBERT's projections have none)
 *   ctx = attention(rope(q), rope(k), v)   zs_mb_attention: rotary applied here, global
 *                              or banded (sliding window), masked blocks never computed
 *   x += ctx Wo; h = LN(x)     zs_mb_residual_norm
 *   g = GeGLU(h Wi)            zs_mb_geglu, on the block the product just wrote
 *   x += g Wo; h = LN(x)       zs_mb_residual_norm (the next layer's norm, or the final one)
 *
 * Formulas and their sources:
 *  - Rotary (Su et al. 2021, RoFormer) in GPT-NeoX's half-split form, as transformers'
 *    apply_rotary_pos_emb: out[i] = x[i] cos - x[i + d/2] sin, out[i + d/2] = x[i + d/2]
 *    cos + x[i] sin, i < d/2, with angle = position * theta^(-2i/d) computed in float32
 *    the way ModernBertRotaryEmbedding does (powf, then 1/x, then position * inv_freq).
 *  - Sliding window: query i attends to keys j with |i - j| <= window (transformers'
 *    sliding_window_bidirectional_overlay; window = local_attention / 2 = 64).
 *  - GeGLU (Shazeer 2020): act(u) * g for [u | g] = h Wi; GELU as in zs_cpu.c (erf by
 *    Eigen's rational approximation, or the tanh form).
 *  - exp: Cephes expf (as zs_cpu.c; its helpers are static there, so each family's
 *    kernels carry their own copy).
 * Padding: a sequence's keys stop at its length (no additive mask: the padded keys are
 * never read), and its padded query rows are written as zeros.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define ACT_GELU_ERF 1 /* zs_bias_act's codes (zs_cpu.c) */
#define ACT_GELU_TANH 2
#define ACT_RELU 3

#if defined(__FMA__) || defined(__AVX512F__)
#define MB_FMA(a, b, c) fmaf((a), (b), (c))
#else
#define MB_FMA(a, b, c) ((a) * (b) + (c))
#endif

#include "zs_math.h"

static inline float mb_gelu_tanh(float x) {
    const float u = 0.7978845608028654f * (x + 0.044715f * x * x * x);
    return 0.5f * x * (2.0f - 2.0f / (1.0f + zs_expf(2.0f * u)));
}

/* LayerNorm without bias of one row into `out` (may be `row`): biased variance, two passes. */
static inline void mb_norm_row(const float *row, float *out, const float *gamma, int64_t n, float eps) {
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int64_t c = 0; c < n; c++) sum += row[c];
    const float mean = sum / (float)n;
    float sq = 0.0f;
#pragma omp simd reduction(+ : sq)
    for (int64_t c = 0; c < n; c++) {
        const float d = row[c] - mean;
        sq += d * d;
    }
    const float rstd = 1.0f / sqrtf(sq / (float)n + eps);
#pragma omp simd
    for (int64_t c = 0; c < n; c++) out[c] = (row[c] - mean) * rstd * gamma[c];
}

/* Rows [row0, row1) of the embeddings: LN(word[ids[r]]); out [B*T, hidden]. */
void zs_mb_embed_norm(float *out, const int64_t *ids, const float *word, const float *gamma, int64_t row0,
                      int64_t row1, int64_t hidden, float eps) {
    for (int64_t r = row0; r < row1; r++) mb_norm_row(word + ids[r] * hidden, out + r * hidden, gamma, hidden, eps);
}

/* out[r] = LN(x[r]) for r in [0, rows) (pointers at the first row). */
void zs_mb_norm(const float *x, float *out, const float *gamma, int64_t rows, int64_t cols, float eps) {
    for (int64_t r = 0; r < rows; r++) mb_norm_row(x + r * cols, out + r * cols, gamma, cols, eps);
}

/* x[r] += add[r]; out[r] = LN(x[r]) for r in [0, rows): the residual, then the next norm. */
void zs_mb_residual_norm(float *x, const float *add, float *out, const float *gamma, int64_t rows, int64_t cols,
                         float eps) {
    for (int64_t r = 0; r < rows; r++) {
        float *row = x + r * cols;
        const float *a = add + r * cols;
#pragma omp simd
        for (int64_t c = 0; c < cols; c++) row[c] += a[c];
        mb_norm_row(row, out + r * cols, gamma, cols, eps);
    }
}

/* g[r, c] = act(f[r, c]) * f[r, inter + c] for rows [row0, row1), columns [c0, c1):
 * f [rows, 2 inter] is the FFN's first product (input | gate), g [rows, inter]. */
void zs_mb_geglu(const float *f, float *g, int64_t row0, int64_t row1, int64_t inter, int64_t c0, int64_t c1,
                 int act) {
    for (int64_t r = row0; r < row1; r++) {
        const float *u = f + r * 2 * inter, *gate = u + inter;
        float *o = g + r * inter;
        switch (act) {
        case ACT_GELU_TANH:
#pragma omp simd
            for (int64_t c = c0; c < c1; c++) o[c] = mb_gelu_tanh(u[c]) * gate[c];
            break;
        case ACT_RELU:
#pragma omp simd
            for (int64_t c = c0; c < c1; c++) o[c] = (u[c] > 0.0f ? u[c] : 0.0f) * gate[c];
            break;
        default:
#pragma omp simd
            for (int64_t c = c0; c < c1; c++) o[c] = zs_gelu_erf(u[c]) * gate[c];
        }
    }
}

/* Rotary table rows [pos0, pos1): table[p, 0:d/2] = cos, table[p, d/2:d] = sin of
 * p * inv_freq[i], inv_freq[i] = 1 / theta^(2i / d), all in float32 (as transformers). */
void zs_mb_rope_table(float *table, int64_t pos0, int64_t pos1, int64_t head_dim, float theta) {
    const int64_t half = head_dim / 2;
    for (int64_t i = 0; i < half; i++) {
        const float inv = 1.0f / powf(theta, (float)(2 * i) / (float)head_dim);
        for (int64_t p = pos0; p < pos1; p++) {
            const float angle = (float)p * inv;
            table[p * head_dim + i] = cosf(angle);
            table[p * head_dim + half + i] = sinf(angle);
        }
    }
}

/* Pooled rows for the classification head: out[b] = x[b, 0] (mode 0, CLS) or the mean of
 * x[b, 0:lengths[b]] (mode 1), b in [0, batch); x [batch * seq_len, hidden]. */
void zs_mb_pool(const float *x, const int64_t *lengths, float *out, int64_t batch, int64_t seq_len, int64_t hidden,
                int mode) {
    for (int64_t b = 0; b < batch; b++) {
        const float *xb = x + b * seq_len * hidden;
        float *o = out + b * hidden;
        memcpy(o, xb, (size_t)hidden * sizeof(float));
        if (mode == 0) continue;
        for (int64_t t = 1; t < lengths[b]; t++) {
            const float *row = xb + t * hidden;
#pragma omp simd
            for (int64_t c = 0; c < hidden; c++) o[c] += row[c];
        }
        const float inv = 1.0f / (float)lengths[b];
#pragma omp simd
        for (int64_t c = 0; c < hidden; c++) o[c] *= inv;
    }
}

static inline void mb_rotate(const float *x, const float *cs, float *out, int64_t d) {
    const int64_t half = d / 2;
    const float *cs_sin = cs + half;
#pragma omp simd
    for (int64_t i = 0; i < half; i++) {
        out[i] = x[i] * cs[i] - x[i + half] * cs_sin[i];
        out[i + half] = x[i + half] * cs[i] + x[i] * cs_sin[i];
    }
}

/* Tile sizes (-DMB_QR=.. -DMB_VB=.. override them, to test one build's tiles on another). */
#if !defined(MB_QR) && defined(__AVX512F__)
#define MB_QR 8  /* query rows per tile */
#define MB_VB 32 /* keys (scores) or columns (context) per tile */
#elif !defined(MB_QR)
#define MB_QR 4
#define MB_VB 16
#endif
#define QR MB_QR
#define VB MB_VB

/* Attention for items [item0, item1) of the B x heads (sequence, head) pairs.
 *
 * qkv [B*T, 3H] (query block pre-scaled by 1/sqrt(d) at convert time, no biases);
 * rope [T, d] (zs_mb_rope_table: this layer's theta); lengths [B]: real tokens of each
 * sequence; window: a key j is seen by query i when |i - j| <= window, or every key
 * when window < 0 (global layers); ctx [B*T, H] output, head h in columns h*d .. h*d+d.
 * Per item, rotated K^T and V are copied into a scratch block padded to whole tiles;
 * each tile of QR query rows computes scores only for the keys its rows can see (the
 * band [i0 - window, i0 + QR - 1 + window], rounded out to whole tiles of VB keys, and
 * cut at the sequence's length), so a banded layer's work grows with T, not T^2.
 * Returns 0, or -1 when the scratch block cannot be allocated. */
int zs_mb_attention(const float *qkv, const float *rope, const int64_t *lengths, float *ctx, int64_t seq_len,
                    int64_t heads, int64_t head_dim, int64_t window, int64_t item0, int64_t item1) {
    const int64_t d = head_dim, h = heads * head_dim, stride = 3 * h;
    const int64_t tp = (seq_len + VB - 1) / VB * VB, dp = (d + VB - 1) / VB * VB;
    float *kt = (float *)calloc((size_t)(d * tp + tp * dp + QR * tp + QR * d + QR * dp + d), sizeof(float));
    if (!kt) return -1;
    float *v = kt + d * tp;  /* [tp, dp]: rows past the length and columns past d are zero */
    float *s = v + tp * dp;  /* [QR, tp] scores, then probabilities */
    float *q = s + QR * tp;  /* [QR, d] rotated queries */
    float *o = q + QR * d;   /* [QR, dp] */
    float *kr = o + QR * dp; /* [d] one rotated key */
    for (int64_t item = item0; item < item1; item++) {
        const int64_t b = item / heads, hd = item % heads;
        const int64_t len = lengths[b] < seq_len ? lengths[b] : seq_len;
        const int64_t lp = (len + VB - 1) / VB * VB;
        const float *base = qkv + b * seq_len * stride;
        for (int64_t j = 0; j < len; j++) {
            mb_rotate(base + j * stride + h + hd * d, rope + j * d, kr, d);
            for (int64_t k = 0; k < d; k++) kt[k * tp + j] = kr[k];
            memcpy(v + j * dp, base + j * stride + 2 * h + hd * d, (size_t)d * sizeof(float));
        }
        for (int64_t j = len; j < lp; j++) { /* the last tile's keys past the length: zero */
            for (int64_t k = 0; k < d; k++) kt[k * tp + j] = 0.0f;
            memset(v + j * dp, 0, (size_t)d * sizeof(float));
        }
        for (int64_t i0 = 0; i0 < len; i0 += QR) {
            const int64_t rows = len - i0 < QR ? len - i0 : QR;
            for (int64_t r = 0; r < QR; r++) {
                const int64_t i = i0 + (r < rows ? r : 0);
                mb_rotate(base + i * stride + hd * d, rope + i * d, q + r * d, d);
            }
            int64_t lo = 0, hi = len; /* keys any row of this tile sees */
            if (window >= 0) {
                lo = i0 - window > 0 ? i0 - window : 0;
                hi = i0 + rows + window < len ? i0 + rows + window : len;
            }
            const int64_t j_lo = lo / VB * VB, j_hi = (hi + VB - 1) / VB * VB;
            for (int64_t j0 = j_lo; j0 < j_hi; j0 += VB) {
                float acc[QR][VB] = {{0}};
                for (int64_t k = 0; k < d; k++) {
                    const float *krow = kt + k * tp + j0;
                    for (int r = 0; r < QR; r++) {
                        const float qk = q[r * d + k];
#pragma omp simd
                        for (int jj = 0; jj < VB; jj++) acc[r][jj] = MB_FMA(qk, krow[jj], acc[r][jj]);
                    }
                }
                for (int r = 0; r < QR; r++)
#pragma omp simd
                    for (int jj = 0; jj < VB; jj++) s[r * tp + j0 + jj] = acc[r][jj];
            }
            for (int64_t r = 0; r < QR; r++) {
                const int64_t i = i0 + r;
                int64_t rlo = 0, rhi = len; /* keys this row sees */
                if (window >= 0) {
                    rlo = i - window > 0 ? i - window : 0;
                    rhi = i + window + 1 < len ? i + window + 1 : len;
                }
                float *sr = s + r * tp;
                float m = -INFINITY;
#pragma omp simd reduction(max : m)
                for (int64_t j = j_lo; j < j_hi; j++) {
                    const float x = (j >= rlo && j < rhi) ? sr[j] : -INFINITY;
                    m = x > m ? x : m;
                }
                float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
                for (int64_t j = j_lo; j < j_hi; j++) {
                    const float e = (j >= rlo && j < rhi) ? zs_expf(sr[j] - m) : 0.0f;
                    sr[j] = e;
                    sum += e;
                }
                const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
#pragma omp simd
                for (int64_t j = j_lo; j < j_hi; j++) sr[j] *= inv;
            }
            for (int64_t c0 = 0; c0 < dp; c0 += VB) {
                float acc[QR][VB] = {{0}};
                for (int64_t j = j_lo; j < j_hi; j++) {
                    const float *vr = v + j * dp + c0;
                    for (int r = 0; r < QR; r++) {
                        const float pj = s[r * tp + j];
#pragma omp simd
                        for (int cc = 0; cc < VB; cc++) acc[r][cc] = MB_FMA(pj, vr[cc], acc[r][cc]);
                    }
                }
                for (int r = 0; r < QR; r++)
#pragma omp simd
                    for (int cc = 0; cc < VB; cc++) o[r * dp + c0 + cc] = acc[r][cc];
            }
            for (int64_t r = 0; r < rows; r++)
                memcpy(ctx + (b * seq_len + i0 + r) * h + hd * d, o + r * dp, (size_t)d * sizeof(float));
        }
        for (int64_t i = len; i < seq_len; i++) memset(ctx + (b * seq_len + i) * h + hd * d, 0, (size_t)d * sizeof(float));
    }
    free(kt);
    return 0;
}
