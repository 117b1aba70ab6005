/* zerostart CPU kernels: fp32 matrix products C = A W, in every build.
 *
 * Theory of operation. A [M, K] and C [M, N] are row-major activations, W [K, N] the
 * weights as stored (row-major, the engine layout). A register tile of MR rows x NR
 * columns of C stays in vector registers while k runs; each k step loads NR/VW vectors
 * of one row of W and broadcasts one element of each of the MR rows of A, so every
 * load of W feeds MR FMAs. Around the tile (BLIS / GotoBLAS order, without packing A):
 *
 *     for kb in K, blocks of kc                 (later blocks add to C)
 *       for mb in [m0, m1), blocks of mc rows    pack A's mc x kc block, k-major per MR
 *                                                 rows (it stays in L2)
 *         for nb in [n0, n1), blocks of nc columns
 *           [pack]: copy W's kc x nc block, panel by panel of NR columns (L2 / L3)
 *           for p in nb, panels of NR columns   (the kc x NR panel: L1 / L2)
 *             for m in mb, tiles of MR rows: micro-kernel
 *
 * Which tile, kc, mc, nc and whether to pack are the caller's choice per CPU (measured:
 * zerostart/kernels/tuning/cpu_gemm.json, chosen at load by zerostart.engine.cpu_tuning);
 * 0 for kc, mc or nc takes the defaults below. The caller also chooses how threads share a
 * product: by rows (m0, m1) or by columns (n0, n1), which at 128 rows keeps each thread
 * on its own half of W instead of both streaming all of it.
 *
 * Tiles per build (zs_gemm_f32_tile_name): AVX-512 builds 512-bit tiles and the AVX2
 * ones; AVX2/FMA builds 256-bit tiles with _mm256_fmadd_ps; every other build (the
 * portable x86-64 one) 4-lane GCC vector extensions (SSE2 on x86-64), multiply then add
 * (no FMA there). Accumulator counts: 8 x 48 (AVX-512) is 24 zmm + 3 of W + 1 of A of
 * 32; 6 x 16 (AVX2) is 12 ymm + 2 + 1 of 16 (BLIS's Haswell tile).
 *
 * Ragged edges: a panel narrower than NR is always packed, zero-padded; A's packed block
 * is zero-padded to whole tiles; a tile with fewer than MR rows or NR columns stores only
 * those it has. Results do not depend on the split over threads (each C element is summed
 * over the same k blocks in the same order). Sizes are int64; returns 0, or
 * ZS_GEMM_NOMEM when the panel buffer cannot be allocated, ZS_GEMM_BADTILE for a tile
 * index this build does not have. Packing buffers are per thread, kept between calls
 * (at most mc x kc + kc x nc floats, a few MiB) and reused by the thread's next product.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#include <immintrin.h>
#endif

#define ZS_GEMM_NOMEM 1
#define ZS_GEMM_BADTILE 2
#define DEFAULT_KC 768                 /* k block when the caller passes 0 (Zen 4's measured best) */
#define DEFAULT_A_BLOCK_BYTES (512 * 1024) /* mc x kc floats of A: half a 1 MiB L2 */
#define DEFAULT_B_BLOCK_BYTES (1024 * 1024) /* kc x nc floats of packed W: in L2 / L3 */
#define PANEL_ALIGN 64
#define PACK_AHEAD 4 /* rows of W prefetched ahead of the packing copy */

typedef void (*zs_micro_kernel)(const float *ap, const float *b, int64_t ldb, int64_t kc, float *c, int64_t ldc,
                                int64_t rows, int64_t cols, int add);

/* One micro-kernel: C[0:rows, 0:cols] (+)= A[0:rows, 0:kc] B[0:kc, 0:NR]; B's row 8 steps
 * ahead is prefetched (past the panel's end near the last steps: a prefetch never faults;
 * +1-5 % on Zen 3, one thread, CPU time) and k is unrolled by 4. A packed k-major
 * (ap[kk * MR + r], zero rows past `rows`), B with row stride ldb. Full tiles store straight from the registers; edge tiles through `done`, spilled with
 * constant indices only (an accumulator indexed by a run-time row would live in memory). */
#define ZS_MICRO_KERNEL(NAME, VT, VW, MR, NJ, LOAD, STORE, ZERO, BCAST, FMA, ADD)                        \
    static void NAME(const float *ap, const float *b, int64_t ldb, int64_t kc, float *c, int64_t ldc,   \
                     int64_t rows, int64_t cols, int add) {                                            \
        VT acc[MR][NJ];                                                                                \
        _Pragma("GCC unroll 16") for (int r = 0; r < MR; r++)                                          \
            _Pragma("GCC unroll 8") for (int j = 0; j < NJ; j++) acc[r][j] = ZERO();                   \
        _Pragma("GCC unroll 4") for (int64_t kk = 0; kk < kc; kk++) {                                  \
            const float *bk = b + kk * ldb, *ak = ap + kk * MR;                                        \
            __builtin_prefetch(bk + 8 * ldb, 0, 3);                                                    \
            VT bv[NJ];                                                                                 \
            _Pragma("GCC unroll 8") for (int j = 0; j < NJ; j++) bv[j] = LOAD(bk + VW * j);            \
            _Pragma("GCC unroll 16") for (int r = 0; r < MR; r++) {                                    \
                const VT av = BCAST(ak[r]);                                                            \
                _Pragma("GCC unroll 8") for (int j = 0; j < NJ; j++) acc[r][j] = FMA(av, bv[j], acc[r][j]); \
            }                                                                                          \
        }                                                                                              \
        if (rows == MR && cols == VW * NJ) {                                                           \
            _Pragma("GCC unroll 16") for (int r = 0; r < MR; r++)                                      \
                _Pragma("GCC unroll 8") for (int j = 0; j < NJ; j++) {                                 \
                    float *cp = c + r * ldc + VW * j;                                                  \
                    STORE(cp, add ? ADD(acc[r][j], LOAD(cp)) : acc[r][j]);                             \
                }                                                                                      \
            return;                                                                                    \
        }                                                                                              \
        float done[MR * NJ * VW];                                                                      \
        _Pragma("GCC unroll 16") for (int r = 0; r < MR; r++)                                          \
            _Pragma("GCC unroll 8") for (int j = 0; j < NJ; j++) STORE(done + (r * NJ + j) * VW, acc[r][j]); \
        for (int64_t r = 0; r < rows; r++)                                                             \
            for (int64_t j = 0; j < cols; j++)                                                         \
                c[r * ldc + j] = (add ? c[r * ldc + j] : 0.0f) + done[r * NJ * VW + j];                \
    }

#if defined(__AVX512F__)
ZS_MICRO_KERNEL(mk_avx512_8x48, __m512, 16, 8, 3, _mm512_loadu_ps, _mm512_storeu_ps, _mm512_setzero_ps,
                _mm512_set1_ps, _mm512_fmadd_ps, _mm512_add_ps)
ZS_MICRO_KERNEL(mk_avx512_6x64, __m512, 16, 6, 4, _mm512_loadu_ps, _mm512_storeu_ps, _mm512_setzero_ps,
                _mm512_set1_ps, _mm512_fmadd_ps, _mm512_add_ps)
ZS_MICRO_KERNEL(mk_avx512_12x32, __m512, 16, 12, 2, _mm512_loadu_ps, _mm512_storeu_ps, _mm512_setzero_ps,
                _mm512_set1_ps, _mm512_fmadd_ps, _mm512_add_ps)
#endif
#if defined(__AVX2__) && defined(__FMA__)
ZS_MICRO_KERNEL(mk_avx2_6x16, __m256, 8, 6, 2, _mm256_loadu_ps, _mm256_storeu_ps, _mm256_setzero_ps,
                _mm256_set1_ps, _mm256_fmadd_ps, _mm256_add_ps)
ZS_MICRO_KERNEL(mk_avx2_4x24, __m256, 8, 4, 3, _mm256_loadu_ps, _mm256_storeu_ps, _mm256_setzero_ps,
                _mm256_set1_ps, _mm256_fmadd_ps, _mm256_add_ps)
#endif

/* The portable path: 4-lane GCC vector extensions (SSE2 on x86-64, NEON on arm64). */
typedef float zs_v4 __attribute__((vector_size(16)));
static inline zs_v4 v4_load(const float *p) {
    zs_v4 v;
    memcpy(&v, p, sizeof v);
    return v;
}
static inline void v4_store(float *p, zs_v4 v) { memcpy(p, &v, sizeof v); }
static inline zs_v4 v4_zero(void) { return (zs_v4){0.0f, 0.0f, 0.0f, 0.0f}; }
static inline zs_v4 v4_bcast(float x) { return (zs_v4){x, x, x, x}; }
static inline zs_v4 v4_fma(zs_v4 a, zs_v4 b, zs_v4 c) { return a * b + c; }
static inline zs_v4 v4_add(zs_v4 a, zs_v4 b) { return a + b; }
ZS_MICRO_KERNEL(mk_v4_6x8, zs_v4, 4, 6, 2, v4_load, v4_store, v4_zero, v4_bcast, v4_fma, v4_add)
ZS_MICRO_KERNEL(mk_v4_4x12, zs_v4, 4, 4, 3, v4_load, v4_store, v4_zero, v4_bcast, v4_fma, v4_add)

typedef struct {
    const char *name; /* "<isa>_<MR>x<NR>": what the tuning table names */
    int64_t mr, nr;
    zs_micro_kernel fn;
} zs_tile;

/* The first tile is the build's default. */
static const zs_tile TILES[] = {
#if defined(__AVX512F__)
    {"avx512_8x48", 8, 48, mk_avx512_8x48},
    {"avx512_6x64", 6, 64, mk_avx512_6x64},
    {"avx512_12x32", 12, 32, mk_avx512_12x32},
#endif
#if defined(__AVX2__) && defined(__FMA__)
    {"avx2_6x16", 6, 16, mk_avx2_6x16},
    {"avx2_4x24", 4, 24, mk_avx2_4x24},
#endif
    {"v4_6x8", 6, 8, mk_v4_6x8},
    {"v4_4x12", 4, 12, mk_v4_4x12},
};
#define N_TILES ((int64_t)(sizeof TILES / sizeof TILES[0]))

/* The name of tile i of this build ("avx2_6x16"), or NULL past the last. */
const char *zs_gemm_f32_tile_name(int64_t i) { return i >= 0 && i < N_TILES ? TILES[i].name : NULL; }

/* Per-thread scratch, grown on demand and kept for the thread's next product: allocating
 * (and faulting in) a fresh buffer per call cost more than packing at 128 rows. */
static _Thread_local float *tl_a, *tl_b;
static _Thread_local size_t tl_a_floats, tl_b_floats;

static float *zs_scratch(float **buf, size_t *have, size_t floats) {
    if (*have >= floats) return *buf;
    free(*buf);
    const size_t bytes = (floats * sizeof(float) + PANEL_ALIGN - 1) / PANEL_ALIGN * PANEL_ALIGN;
    *buf = aligned_alloc(PANEL_ALIGN, bytes);
    *have = *buf != NULL ? floats : 0;
    return *buf;
}

/* C[m0:m1, n0:n1] = A[m0:m1, :] W[:, n0:n1]; A [*, k], W [k, n], C [*, n] row-major.
 * tile: index into TILES; kc: k block (0: DEFAULT_KC; k is cut into even blocks of at most
 * kc); mc: rows per block of A (0: DEFAULT_A_BLOCK_BYTES worth); nc: columns per packed
 * block of W (0: DEFAULT_B_BLOCK_BYTES worth; packing reads W a block-row at a time, nc
 * contiguous floats per k, which the prefetcher streams, rather than NR per k); pack: pack
 * W's blocks (non-zero) or read full panels in place. */
int zs_gemm_f32(const float *a, const float *w, float *c, int64_t m0, int64_t m1, int64_t n0, int64_t n1,
                int64_t k, int64_t n, int64_t tile, int64_t kc, int64_t mc, int64_t nc, int64_t pack) {
    if (tile < 0 || tile >= N_TILES) return ZS_GEMM_BADTILE;
    if (m1 <= m0 || n1 <= n0) return 0;
    if (k <= 0) {
        for (int64_t m = m0; m < m1; m++) memset(c + m * n + n0, 0, (size_t)(n1 - n0) * sizeof(float));
        return 0;
    }
    const zs_tile *t = &TILES[tile];
    const int64_t mr = t->mr, nr = t->nr;
    if (kc <= 0) kc = DEFAULT_KC;
    const int64_t nkb = (k + kc - 1) / kc, kc_even = (k + nkb - 1) / nkb;
    if (mc <= 0) mc = DEFAULT_A_BLOCK_BYTES / (int64_t)(sizeof(float) * kc_even);
    mc = mc < mr ? mr : mc / mr * mr;
    if (!pack) nc = n1 - n0; /* in place: one block; only a ragged last panel is copied */
    else if (nc <= 0) nc = DEFAULT_B_BLOCK_BYTES / (int64_t)(sizeof(float) * kc_even);
    nc = nc < nr ? nr : (pack ? nc / nr * nr : nc);
    const int64_t mc_used = mc < m1 - m0 ? mc : (m1 - m0 + mr - 1) / mr * mr;
    const int64_t nc_used = !pack ? nr : nc < n1 - n0 ? nc : (n1 - n0 + nr - 1) / nr * nr;
    float *apack = zs_scratch(&tl_a, &tl_a_floats, (size_t)(mc_used * kc_even));
    float *bpack = zs_scratch(&tl_b, &tl_b_floats, (size_t)(nc_used * kc_even));
    if (apack == NULL || bpack == NULL) return ZS_GEMM_NOMEM;
    for (int64_t kb = 0; kb < k; kb += kc_even) {
        const int64_t kcb = k - kb < kc_even ? k - kb : kc_even;
        for (int64_t mb = m0; mb < m1; mb += mc) {
            const int64_t me = mb + mc < m1 ? mb + mc : m1;
            /* A's block, tile by tile, k-major: apack[t][kk][r] = A[mb + t mr + r, kb + kk],
             * zero rows past me. Packed once, used against every block of W. */
            for (int64_t m = mb; m < me; m += mr) {
                float *dst = apack + (m - mb) * kcb;
                for (int64_t r = 0; r < mr; r++) {
                    const float *src = a + (m + r) * k + kb;
                    if (m + r < me)
                        for (int64_t kk = 0; kk < kcb; kk++) dst[kk * mr + r] = src[kk];
                    else
                        for (int64_t kk = 0; kk < kcb; kk++) dst[kk * mr + r] = 0.0f;
                }
            }
            for (int64_t nb = n0; nb < n1; nb += nc) {
                const int64_t ne = nb + nc < n1 ? nb + nc : n1;
                /* W's block, panel-major: bpack[panel][kk][0:nr], zero past column ne; in
                 * place, only the ragged last panel (at bpack). */
                const int64_t ragged = nb + (ne - nb) / nr * nr;
                const int64_t pack_from = pack ? nb : ragged;
                for (int64_t kk = 0; kk < kcb && pack_from < ne; kk++) {
                    const float *src = w + (kb + kk) * n;
                    /* The rows PACK_AHEAD below, requested now: each row of the block starts a
                     * new page, where the hardware prefetcher starts over. */
                    const float *ahead = w + (kb + (kk + PACK_AHEAD < kcb ? kk + PACK_AHEAD : kk)) * n;
                    for (int64_t p = pack_from; p < ne; p += nr) {
                        float *dst = bpack + (p - pack_from) * kcb + kk * nr;
                        const int64_t cols = ne - p < nr ? ne - p : nr;
                        for (int64_t j = 0; j < cols; j += 16) __builtin_prefetch(ahead + p + j, 0, 0);
                        if (cols == nr && nr % 4 == 0) { /* fixed 16-byte moves: inlined, no call */
                            for (int64_t j = 0; j < nr; j += 4) memcpy(dst + j, src + p + j, 4 * sizeof(float));
                        } else {
                            memcpy(dst, src + p, (size_t)cols * sizeof(float));
                            memset(dst + cols, 0, (size_t)(nr - cols) * sizeof(float));
                        }
                    }
                }
                for (int64_t p = nb; p < ne; p += nr) {
                    const int64_t cols = ne - p < nr ? ne - p : nr;
                    const int copied = p >= pack_from;
                    const float *b = copied ? bpack + (p - pack_from) * kcb : w + kb * n + p;
                    const int64_t ldb = copied ? nr : n;
                    for (int64_t m = mb; m < me; m += mr) {
                        const int64_t rows = me - m < mr ? me - m : mr;
                        t->fn(apack + (m - mb) * kcb, b, ldb, kcb, c + m * n + p, n, rows, cols, kb > 0);
                    }
                }
            }
        }
    }
    return 0;
}
