/* zerostart CPU kernels for DeBERTa-v2/v3: disentangled attention and embeddings without positions.
 *
 * Theory of operation. DeBERTa's attention score (He et al. 2021, "DeBERTa", eq. 4;
 * transformers' DisentangledSelfAttention) of query i and key j is
 *
 *     s[i, j] = q_i . k_j + q_i . posk[r(i, j)] + k_j . posq[r(i, j)]
 *
 * with r(i, j) = rel_index[i - j + P - 1] (log-bucketed, clamped; written at convert time,
 * zerostart/model/deberta.py), q and posq pre-scaled by 1/sqrt(3 d). The naive form
 * materialises q_i + posk[r(i, j)] for every pair, a [T, T, d] tensor. Instead, per
 * (sequence, head), the two position terms are products with the W rows of the
 * relative tables that the sequence's distances reach (rows lo..hi, W <= 2T - 1):
 *
 *     C2P = Q . posk[lo:hi]^T   [T, W]      P2C = K . posq[lo:hi]^T   [T, W]
 *
 * and the score adds C2P[i, r(i, j) - lo] + P2C[j, r(i, j) - lo]: two gathers per
 * pair from [T, W] products, never a [T, T, d] tensor. P2C is computed once per item
 * (all keys); C2P one tile of query rows at a time, beside that tile's scores, so a
 * tile's work stays in L1/L2, as in zs_attention (zs_cpu.c). All four products
 * (Q K^T, C2P, P2C, P V) share one register-tiled routine that GCC's vectoriser turns
 * into SSE / AVX2 / AVX-512 code for each build's -march.
 *
 * Softmax, the mask (finfo(float32).min on padding keys, as transformers' masked_fill),
 * exp (Cephes) and LayerNorm follow zs_cpu.c; this file keeps its own copies so it
 * stays one self-contained translation unit added to the build (cpu_build.SOURCES).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>

#ifndef DQR
#define DQR 4 /* query (or key) rows per tile */
#endif
#ifndef DVB
#define DVB 16 /* columns per tile: one AVX-512 vector, two AVX2, four SSE */
#endif

/* -std=c11 keeps GCC from contracting a*b+c into an FMA (-ffp-contract=off): ask for it where
 * the build has the instruction (AVX2 and AVX-512 builds); elsewhere fmaf would be a libm call. */
#if defined(__FMA__)
#define ZSD_FMA(a, b, c) fmaf((a), (b), (c))
#else
#define ZSD_FMA(a, b, c) ((a) * (b) + (c))
#endif

#include "zs_math.h"

/* out[r, 0:np] = sum_k a[r * lda + k] * bt[k * ldb + 0:np] for r < DQR; np a multiple of DVB. */
static void zsd_tile(const float *a, int64_t lda, int64_t kdim, const float *bt, int64_t ldb, int64_t np,
                     float *out, int64_t ldo) {
    for (int64_t n0 = 0; n0 < np; n0 += DVB) {
        float acc[DQR][DVB] = {{0}};
        for (int64_t k = 0; k < kdim; k++) {
            const float *br = bt + k * ldb + n0;
            for (int r = 0; r < DQR; r++) {
                const float ak = a[r * lda + k];
#pragma omp simd
                for (int c = 0; c < DVB; c++) acc[r][c] = ZSD_FMA(ak, br[c], acc[r][c]);
            }
        }
        for (int r = 0; r < DQR; r++)
#pragma omp simd
            for (int c = 0; c < DVB; c++) out[r * ldo + n0 + c] = acc[r][c];
    }
}

static inline int64_t zsd_pad(int64_t n) { return (n + DVB - 1) / DVB * DVB; }

/* Disentangled attention for items [item0, item1) of the B x heads (sequence, head) pairs.
 *
 * qkv: [B*T, 3H] projections without bias (bias added here; the query block pre-scaled);
 * qkv_bias [3H]; pos_q, pos_k: [2 span, H] the layer's relative tables (pos_q pre-scaled);
 * rel_index: int32 [2P - 1], P = positions >= T; mask_bias: [B, T] additive (0 or
 * finfo.min) or NULL; ctx: [B*T, H] output, head h in columns h*d .. h*d+d.
 * Returns 0, -1 when the scratch block cannot be allocated, -2 for T > P. */
int zs_disentangled_attention(const float *qkv, const float *qkv_bias, const float *pos_q, const float *pos_k,
                              const int32_t *rel_index, int64_t positions, const float *mask_bias, float *ctx,
                              int64_t seq_len, int64_t heads, int64_t head_dim, int64_t item0, int64_t item1) {
    const int64_t t_len = seq_len, d = head_dim, h = heads * head_dim, stride = 3 * h;
    if (t_len > positions || t_len < 1) return -2;
    const int32_t *ri = rel_index + positions - 1; /* ri[i - j] = r(i, j) */
    const int64_t lo = ri[-(t_len - 1)], hi = ri[t_len - 1], w = hi - lo + 1;
    const int64_t tp = zsd_pad(t_len), dp = zsd_pad(d), wp = zsd_pad(w);
    const int64_t rows_p = (t_len + DQR - 1) / DQR * DQR; /* key rows, whole tiles */
    const size_t n = (size_t)(d * tp + tp * dp + rows_p * d + 2 * d * wp + rows_p * wp + DQR * tp + DQR * wp +
                              DQR * d + DQR * dp);
    float *kt = (float *)calloc(n, sizeof(float));
    if (!kt) return -1;
    float *v = kt + d * tp;          /* [tp, dp] V + bias; padding rows/columns zero */
    float *kr = v + tp * dp;         /* [rows_p, d] K + bias, row-major (for P2C) */
    float *pkt = kr + rows_p * d;    /* [d, wp] posk rows lo..hi, transposed */
    float *pqt = pkt + d * wp;       /* [d, wp] posq rows lo..hi, transposed */
    float *p2c = pqt + d * wp;       /* [rows_p, wp] */
    float *s = p2c + rows_p * wp;    /* [DQR, tp] scores, then probabilities */
    float *c2p = s + DQR * tp;       /* [DQR, wp] */
    float *q = c2p + DQR * wp;       /* [DQR, d] */
    float *o = q + DQR * d;          /* [DQR, dp] */
    for (int64_t item = item0; item < item1; item++) {
        const int64_t b = item / heads, hd = item % heads;
        const float *base = qkv + b * t_len * stride;
        const float *qb = qkv_bias + hd * d, *kb = qkv_bias + h + hd * d, *vb = qkv_bias + 2 * h + hd * d;
        const float *mb = mask_bias ? mask_bias + b * t_len : NULL;
        for (int64_t j = 0; j < t_len; j++) {
            const float *krow = base + j * stride + h + hd * d, *vrow = base + j * stride + 2 * h + hd * d;
#pragma omp simd
            for (int64_t k = 0; k < d; k++) kr[j * d + k] = krow[k] + kb[k];
            for (int64_t k = 0; k < d; k++) kt[k * tp + j] = kr[j * d + k];
#pragma omp simd
            for (int64_t k = 0; k < d; k++) v[j * dp + k] = vrow[k] + vb[k];
        }
        for (int64_t x = 0; x < w; x++) {
            const float *pk = pos_k + (lo + x) * h + hd * d, *pq = pos_q + (lo + x) * h + hd * d;
            for (int64_t k = 0; k < d; k++) {
                pkt[k * wp + x] = pk[k];
                pqt[k * wp + x] = pq[k];
            }
        }
        for (int64_t j0 = 0; j0 < t_len; j0 += DQR) /* P2C[j, x] = k_j . posq[lo + x] */
            zsd_tile(kr + j0 * d, d, d, pqt, wp, wp, p2c + j0 * wp, wp);
        for (int64_t i0 = 0; i0 < t_len; i0 += DQR) {
            const int64_t rows = t_len - i0 < DQR ? t_len - i0 : DQR;
            for (int64_t r = 0; r < DQR; r++) {
                const float *qr = base + (i0 + (r < rows ? r : 0)) * stride + hd * d;
#pragma omp simd
                for (int64_t k = 0; k < d; k++) q[r * d + k] = qr[k] + qb[k];
            }
            zsd_tile(q, d, d, kt, tp, tp, s, tp);     /* content -> content */
            zsd_tile(q, d, d, pkt, wp, wp, c2p, wp);  /* content -> position, rows lo..hi */
            for (int64_t r = 0; r < rows; r++) {
                const int64_t i = i0 + r;
                float *sr = s + r * tp;
                const float *cr = c2p + r * wp;
                const int32_t *rr = ri + i; /* rr[-j] = r(i, j) */
                for (int64_t j = 0; j < t_len; j++) {
                    const int64_t x = rr[-j] - lo;
                    sr[j] += cr[x] + p2c[j * wp + x];
                }
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
                    const float e = zs_expf(sr[j] - m);
                    sr[j] = e;
                    sum += e;
                }
                const float inv = 1.0f / sum;
#pragma omp simd
                for (int64_t j = 0; j < t_len; j++) sr[j] *= inv;
                for (int64_t j = t_len; j < tp; j++) sr[j] = 0.0f;
            }
            for (int64_t r = rows; r < DQR; r++) memset(s + r * tp, 0, (size_t)tp * sizeof(float));
            zsd_tile(s, tp, t_len, v, dp, dp, o, dp); /* probabilities . V */
            for (int64_t r = 0; r < rows; r++) {
                float *out = ctx + (b * t_len + i0 + r) * h + hd * d;
                memcpy(out, o + r * dp, (size_t)d * sizeof(float));
            }
        }
    }
    free(kt);
    return 0;
}

static inline void zsd_layer_norm_row(float *row, const float *gamma, const float *beta, int64_t n, float eps) {
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int64_t c = 0; c < n; c++) sum += row[c];
    const float mean = sum / (float)n;
    float sq = 0.0f;
#pragma omp simd reduction(+ : sq)
    for (int64_t c = 0; c < n; c++) {
        const float dv = row[c] - mean;
        sq += dv * dv;
    }
    const float rstd = 1.0f / sqrtf(sq / (float)n + eps);
#pragma omp simd
    for (int64_t c = 0; c < n; c++) row[c] = (row[c] - mean) * rstd * gamma[c] + beta[c];
}

/* Rows [row0, row1) of DeBERTa's embeddings: LayerNorm(word[ids] (+ type[types])), no positions.
 * ids/types: int64 [B*T]; type_table NULL when the model has none (types then ignored). */
void zs_embed_layernorm_nopos(float *out, const int64_t *ids, const int64_t *types, const float *word,
                              const float *type_table, const float *gamma, const float *beta, int64_t row0,
                              int64_t row1, int64_t hidden, float eps) {
    for (int64_t r = row0; r < row1; r++) {
        float *row = out + r * hidden;
        const float *wr = word + ids[r] * hidden;
        memcpy(row, wr, (size_t)hidden * sizeof(float));
        if (type_table) {
            const float *ty = type_table + (types ? types[r] : 0) * hidden;
#pragma omp simd
            for (int64_t c = 0; c < hidden; c++) row[c] += ty[c];
        }
        zsd_layer_norm_row(row, gamma, beta, hidden, eps);
    }
}
