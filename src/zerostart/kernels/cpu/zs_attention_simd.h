/* zs_attention's body for the builds with intrinsics (AVX-512, AVX2 + FMA), written once.
 *
 * zs_cpu.c defines, before including this file, the vector type and width and the few
 * operations that differ between the two instruction sets:
 *   ZA_V, ZA_W          vector type, lanes (16 or 8);  ZA_QR query rows per tile;
 *   ZA_LOAD / ZA_STORE  aligned, ZA_LOADU / ZA_STOREU unaligned;  ZA_LOADN(p, n) /
 *                       ZA_STOREN(p, n, x): lanes [0, n) only (no access past them);
 *   ZA_SET1, ZA_ZERO, ZA_ADD, ZA_SUB, ZA_MUL, ZA_MAX, ZA_FMA(a, b, c) = a b + c,
 *   ZA_BCAST(p)         broadcast *p;  ZA_EXP  the build's vector exp (zs_math.h's formula);
 *   ZA_KEEP(x, n)       lanes >= n set to zero;  ZA_MAXN(x, n) lanes >= n set to -inf;
 *   ZA_HMAX, ZA_HSUM    horizontal max / sum to a float.
 * Tiles: ZA_QR query rows x 2 vectors of keys (scores) or context columns, 2 ZA_QR
 * accumulators; the algorithm and scratch layout are zs_cpu.c's (see zs_attention there).
 */
#define ZA_VB (2 * ZA_W) /* keys or columns per tile */

int zs_attention(const float *qkv, const float *qkv_bias, const float *mask_bias, float *ctx, int64_t seq_len,
                 int64_t heads, int64_t head_dim, int64_t item0, int64_t item1) {
    const int64_t t_len = seq_len, d = head_dim, h = heads * head_dim, stride = 3 * h;
    const int64_t tp = (t_len + ZA_VB - 1) / ZA_VB * ZA_VB, dp = (d + ZA_VB - 1) / ZA_VB * ZA_VB;
    const size_t bytes = (size_t)(d * tp + tp * dp + ZA_QR * tp + ZA_QR * d) * sizeof(float);
    float *kt = (float *)aligned_alloc(64, (bytes + 63) / 64 * 64);
    if (!kt) return -1;
    float *v = kt + d * tp;    /* [tp, dp], rows >= T and columns >= d are zero */
    float *s = v + tp * dp;    /* [ZA_QR, tp] scores, then probabilities (zero past T) */
    float *q = s + ZA_QR * tp; /* [ZA_QR, d] */
    memset(kt, 0, (size_t)(d * tp + tp * dp) * sizeof(float));
    for (int64_t item = item0; item < item1; item++) {
        const int64_t b = item / heads, hd = item % heads;
        const float *base = qkv + b * t_len * stride;
        const float *kb = qkv_bias + h + hd * d, *vb = qkv_bias + 2 * h + hd * d, *qb = qkv_bias + hd * d;
        const float *mb = mask_bias ? mask_bias + b * t_len : NULL;
        for (int64_t j = 0; j < t_len; j++) {
            const float *kr = base + j * stride + h + hd * d, *vr = base + j * stride + 2 * h + hd * d;
            for (int64_t k = 0; k < d; k++) kt[k * tp + j] = kr[k] + kb[k];
            for (int64_t k = 0; k < d; k += ZA_W)
                ZA_STOREN(v + j * dp + k, d - k, ZA_ADD(ZA_LOADN(vr + k, d - k), ZA_LOADN(vb + k, d - k)));
        }
        for (int64_t i0 = 0; i0 < t_len; i0 += ZA_QR) {
            const int64_t rows = t_len - i0 < ZA_QR ? t_len - i0 : ZA_QR;
            for (int64_t r = 0; r < ZA_QR; r++) {
                const float *qr = base + (i0 + (r < rows ? r : 0)) * stride + hd * d;
                for (int64_t k = 0; k < d; k++) q[r * d + k] = qr[k] + qb[k];
            }
            for (int64_t j0 = 0; j0 < tp; j0 += ZA_VB) {
                ZA_V acc[ZA_QR][2];
                for (int r = 0; r < ZA_QR; r++) acc[r][0] = acc[r][1] = ZA_ZERO();
                for (int64_t k = 0; k < d; k++) {
                    const ZA_V k0 = ZA_LOAD(kt + k * tp + j0), k1 = ZA_LOAD(kt + k * tp + j0 + ZA_W);
                    for (int r = 0; r < ZA_QR; r++) {
                        const ZA_V qk = ZA_BCAST(q + r * d + k);
                        acc[r][0] = ZA_FMA(qk, k0, acc[r][0]);
                        acc[r][1] = ZA_FMA(qk, k1, acc[r][1]);
                    }
                }
                for (int r = 0; r < ZA_QR; r++) {
                    ZA_STORE(s + r * tp + j0, acc[r][0]);
                    ZA_STORE(s + r * tp + j0 + ZA_W, acc[r][1]);
                }
            }
            for (int r = 0; r < ZA_QR; r++) {
                float *sr = s + r * tp;
                ZA_V vmax = ZA_SET1(-INFINITY);
                for (int64_t j = 0; j < tp; j += ZA_W) {
                    ZA_V x = ZA_LOAD(sr + j);
                    if (mb) x = ZA_ADD(x, ZA_LOADN(mb + j, t_len - j));
                    ZA_STORE(sr + j, x);
                    vmax = ZA_MAX(vmax, ZA_MAXN(x, t_len - j));
                }
                const ZA_V m = ZA_SET1(ZA_HMAX(vmax));
                ZA_V vsum = ZA_ZERO();
                for (int64_t j = 0; j < tp; j += ZA_W) {
                    const ZA_V e = ZA_KEEP(ZA_EXP(ZA_SUB(ZA_LOAD(sr + j), m)), t_len - j);
                    ZA_STORE(sr + j, e);
                    vsum = ZA_ADD(vsum, e);
                }
                const ZA_V inv = ZA_SET1(1.0f / ZA_HSUM(vsum));
                for (int64_t j = 0; j < tp; j += ZA_W) ZA_STORE(sr + j, ZA_MUL(ZA_LOAD(sr + j), inv));
            }
            for (int64_t c0 = 0; c0 < dp; c0 += ZA_VB) {
                ZA_V acc[ZA_QR][2];
                for (int r = 0; r < ZA_QR; r++) acc[r][0] = acc[r][1] = ZA_ZERO();
                for (int64_t j = 0; j < t_len; j++) {
                    const ZA_V v0 = ZA_LOAD(v + j * dp + c0), v1 = ZA_LOAD(v + j * dp + c0 + ZA_W);
                    for (int r = 0; r < ZA_QR; r++) {
                        const ZA_V pj = ZA_BCAST(s + r * tp + j);
                        acc[r][0] = ZA_FMA(pj, v0, acc[r][0]);
                        acc[r][1] = ZA_FMA(pj, v1, acc[r][1]);
                    }
                }
                float done[ZA_QR * ZA_VB]; /* constant indices only: see zs_gemm_u8s8 */
                for (int r = 0; r < ZA_QR; r++) {
                    ZA_STOREU(done + r * ZA_VB, acc[r][0]);
                    ZA_STOREU(done + r * ZA_VB + ZA_W, acc[r][1]);
                }
                for (int64_t r = 0; r < rows; r++) {
                    float *out = ctx + (b * t_len + i0 + r) * h + hd * d + c0;
                    ZA_STOREN(out, d - c0, ZA_LOADU(done + r * ZA_VB));
                    ZA_STOREN(out + ZA_W, d - c0 - ZA_W, ZA_LOADU(done + r * ZA_VB + ZA_W));
                }
            }
        }
    }
    free(kt);
    return 0;
}
