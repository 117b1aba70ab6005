/*
 * zerostart's minimal BLAS: the CBLAS routines numpy calls, under the names of
 * the OpenBLAS numpy's wheels link against, for images whose worker never does
 * heavy linear algebra in numpy (a GPU worker; a CPU worker whose kernels
 * carry their own matrix products: AVX-512 builds). It replaces numpy's
 * 25 MB OpenBLAS (+ 3 MB of libgfortran/libquadmath) with ~60 KB.
 *
 * Built by zerostart.kernels.blas_build at image build time (gcc, build time
 * only), with the symbol names read from numpy's own extension modules:
 *   -DZS_PREFIX=scipy_ -DZS_SUFFIX=64_ -DZS_ILP64=1   (numpy 2.x wheels)
 * CBLAS names are PREFIX cblas_x SUFFIX ("scipy_cblas_sgemm64_"), LAPACK names
 * PREFIX x_ SUFFIX ("scipy_sgesv_64_"). Integers are int64 with ZS_ILP64, the
 * CBLAS enums C ints (OpenBLAS' cblas.h).
 *
 * Semantics are the reference BLAS's (netlib, http://www.netlib.org/blas/):
 * row- and column-major, transposes and conjugate transposes, negative
 * increments, beta == 0 never reads C/Y (NaN there does not propagate), syrk
 * updates only the requested triangle. Real GEMM is a cache-friendly i-k-j
 * loop compiled for AVX-512, AVX2 and baseline x86-64 (chosen at load by the
 * CPU, gcc target_clones); the rest are plain loops (numpy calls them on the
 * small arrays of a worker's heads and post-processing).
 *
 * LAPACK (numpy.linalg's solvers and decompositions) is not here: each of
 * those names reports itself on stderr and aborts. A zerostart worker never
 * calls them (numpy.linalg.norm, which it does call, needs no LAPACK).
 */
#include <complex.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef ZS_PREFIX
#define ZS_PREFIX scipy_
#endif
#ifndef ZS_SUFFIX
#define ZS_SUFFIX 64_
#endif
#if defined(ZS_ILP64) && ZS_ILP64
typedef int64_t blasint;
#else
typedef int blasint;
#endif

#define ZS_CAT3_(a, b, c) a##b##c
#define ZS_CAT3(a, b, c) ZS_CAT3_(a, b, c)
#define CBLAS(name) ZS_CAT3(ZS_PREFIX, cblas_##name, ZS_SUFFIX)
#define LAPACK(name) ZS_CAT3(ZS_PREFIX, name##_, ZS_SUFFIX)
#define EXPORT __attribute__((visibility("default")))

enum { RowMajor = 101, ColMajor = 102 };
enum { NoTrans = 111, Trans = 112, ConjTrans = 113, ConjNoTrans = 114 };
enum { Upper = 121, Lower = 122 };

typedef float complex cfloat;
typedef double complex cdouble;

/* First index of a strided vector of n elements (the reference BLAS's KX). */
static inline blasint start(blasint n, blasint inc) { return inc < 0 ? (1 - n) * inc : 0; }

/* ---- real GEMM: row-major C[M,N] = alpha * op(A)[M,K] op(B)[K,N] + beta * C ---------- */
/* op(A)[i,p] = a[i*sai + p*sak]; B is row-major K x N with row stride ldb. */
#define REAL_ROWS(NAME, T)                                                                      \
    __attribute__((target_clones("avx512f", "avx2", "default"))) static void NAME(             \
        blasint m, blasint n, blasint k, T alpha, const T *a, blasint sai, blasint sak,        \
        const T *b, blasint ldb, T beta, T *c, blasint ldc) {                                   \
        for (blasint i = 0; i < m; i++) {                                                       \
            T *ci = c + i * ldc;                                                                \
            if (beta == 0) {                                                                    \
                for (blasint j = 0; j < n; j++) ci[j] = 0;                                      \
            } else if (beta != 1) {                                                             \
                for (blasint j = 0; j < n; j++) ci[j] *= beta;                                  \
            }                                                                                   \
            for (blasint p = 0; p < k; p++) {                                                   \
                const T av = alpha * a[i * sai + p * sak];                                      \
                const T *bp = b + p * ldb;                                                      \
                for (blasint j = 0; j < n; j++) ci[j] += av * bp[j];                            \
            }                                                                                   \
        }                                                                                       \
    }
REAL_ROWS(sgemm_rows, float)
REAL_ROWS(dgemm_rows, double)

static void *xmalloc(size_t bytes) {
    void *p = malloc(bytes ? bytes : 1);
    if (!p) {
        fprintf(stderr, "zerostart minimal BLAS: out of memory (%zu bytes)\n", bytes);
        abort();
    }
    return p;
}

/* Column-major C = op(A) op(B) is row-major C^T = op(B)^T op(A)^T: swap the operands. */
#define TO_ROW_MAJOR(T)                                                                         \
    if (order == ColMajor) {                                                                    \
        const T *t = a; a = b; b = t;                                                           \
        blasint ti = lda; lda = ldb; ldb = ti;                                                  \
        int tt = ta; ta = tb; tb = tt;                                                          \
        ti = m; m = n; n = ti;                                                                  \
    }
#define REAL_GEMM(NAME, T, ROWS)                                                               \
    EXPORT void CBLAS(NAME)(int order, int ta, int tb, blasint m, blasint n, blasint k,         \
                            T alpha, const T *a, blasint lda, const T *b, blasint ldb, T beta,  \
                            T *c, blasint ldc) {                                                \
        TO_ROW_MAJOR(T)                                                                          \
        if (m <= 0 || n <= 0) return;                                                           \
        int at = ta == Trans || ta == ConjTrans, bt = tb == Trans || tb == ConjTrans;           \
        const T *bb = b;                                                                        \
        T *packed = NULL;                                                                       \
        if (bt && k > 0) { /* op(B) = B^T: make it row-major K x N for the inner loop */        \
            packed = (T *)xmalloc((size_t)k * (size_t)n * sizeof(T));                           \
            for (blasint p = 0; p < k; p++)                                                     \
                for (blasint j = 0; j < n; j++) packed[p * n + j] = b[j * ldb + p];             \
            bb = packed;                                                                        \
            ldb = n;                                                                            \
        }                                                                                       \
        ROWS(m, n, k > 0 ? k : 0, alpha, a, at ? 1 : lda, at ? lda : 1, bb, ldb, beta, c, ldc); \
        free(packed);                                                                           \
    }
REAL_GEMM(sgemm, float, sgemm_rows)
REAL_GEMM(dgemm, double, dgemm_rows)

/* ---- complex GEMM: plain loops --------------------------------------------------------- */
#define CPLX_GEMM(NAME, T)                                                                      \
    EXPORT void CBLAS(NAME)(int order, int ta, int tb, blasint m, blasint n, blasint k,          \
                            const void *alphap, const void *av, blasint lda, const void *bv,     \
                            blasint ldb, const void *betap, void *cv, blasint ldc) {             \
        const T *a = (const T *)av, *b = (const T *)bv;                                          \
        T *c = (T *)cv, alpha = *(const T *)alphap, beta = *(const T *)betap;                    \
        TO_ROW_MAJOR(T)                                                                          \
        int at = ta == Trans || ta == ConjTrans, bt = tb == Trans || tb == ConjTrans;            \
        int ac = ta == ConjTrans || ta == ConjNoTrans, bc = tb == ConjTrans || tb == ConjNoTrans; \
        for (blasint i = 0; i < m; i++)                                                          \
            for (blasint j = 0; j < n; j++) {                                                    \
                T s = 0;                                                                         \
                for (blasint p = 0; p < k; p++) {                                                \
                    T x = at ? a[p * lda + i] : a[i * lda + p];                                  \
                    T y = bt ? b[j * ldb + p] : b[p * ldb + j];                                  \
                    s += (ac ? conj(x) : x) * (bc ? conj(y) : y);                                \
                }                                                                                \
                T *cij = c + i * ldc + j;                                                        \
                *cij = alpha * s + (beta == 0 ? 0 : beta * *cij);                                \
            }                                                                                    \
    }
CPLX_GEMM(cgemm, cfloat)
CPLX_GEMM(zgemm, cdouble)

/* ---- GEMV: y = alpha op(A) x + beta y ---------------------------------------------------- */
#define GEMV_BODY(T, CONJ)                                                                      \
    /* row-major A[m,n]; column-major is the transpose of the same memory */                   \
    int t = ta == Trans || ta == ConjTrans, cj = ta == ConjTrans || ta == ConjNoTrans;          \
    blasint rows = m, cols = n;                                                                 \
    if (order == ColMajor) { /* the same memory as a row-major cols x rows matrix */            \
        t = !t;                                                                                 \
        rows = n;                                                                               \
        cols = m;                                                                               \
    }                                                                                           \
    blasint leny = t ? cols : rows, lenx = t ? rows : cols;                                     \
    if (leny <= 0) return;                                                                      \
    blasint iy = start(leny, incy);                                                             \
    for (blasint r = 0; r < leny; r++, iy += incy) {                                            \
        T s = 0;                                                                                \
        blasint ix = start(lenx, incx);                                                         \
        for (blasint q = 0; q < lenx; q++, ix += incx) {                                        \
            T e = t ? a[q * lda + r] : a[r * lda + q];                                          \
            s += (cj ? CONJ(e) : e) * x[ix];                                                    \
        }                                                                                       \
        y[iy] = alpha * s + (beta == 0 ? 0 : beta * y[iy]);                                     \
    }

#define IDENT(e) (e)
EXPORT void CBLAS(sgemv)(int order, int ta, blasint m, blasint n, float alpha, const float *a,
                         blasint lda, const float *x, blasint incx, float beta, float *y,
                         blasint incy) {
    GEMV_BODY(float, IDENT)
}
EXPORT void CBLAS(dgemv)(int order, int ta, blasint m, blasint n, double alpha, const double *a,
                         blasint lda, const double *x, blasint incx, double beta, double *y,
                         blasint incy) {
    GEMV_BODY(double, IDENT)
}
#define CPLX_GEMV(NAME, T)                                                                      \
    EXPORT void CBLAS(NAME)(int order, int ta, blasint m, blasint n, const void *alphap,         \
                            const void *av, blasint lda, const void *xv, blasint incx,           \
                            const void *betap, void *yv, blasint incy) {                         \
        const T *a = (const T *)av, *x = (const T *)xv;                                          \
        T *y = (T *)yv, alpha = *(const T *)alphap, beta = *(const T *)betap;                    \
        GEMV_BODY(T, conj)                                                                       \
    }
CPLX_GEMV(cgemv, cfloat)
CPLX_GEMV(zgemv, cdouble)

/* ---- dot products and axpy --------------------------------------------------------------- */
#define DOT_LOOP(T, CONJ_X)                                                                     \
    T s = 0;                                                                                    \
    blasint ix = start(n, incx), iy = start(n, incy);                                           \
    for (blasint i = 0; i < n; i++, ix += incx, iy += incy) s += CONJ_X(x[ix]) * y[iy];

EXPORT float CBLAS(sdot)(blasint n, const float *x, blasint incx, const float *y, blasint incy) {
    /* accumulated in double: numpy's float32 dot of long vectors stays close to OpenBLAS' */
    double s = 0;
    blasint ix = start(n, incx), iy = start(n, incy);
    for (blasint i = 0; i < n; i++, ix += incx, iy += incy) s += (double)x[ix] * (double)y[iy];
    return (float)s;
}
EXPORT double CBLAS(ddot)(blasint n, const double *x, blasint incx, const double *y,
                          blasint incy) {
    DOT_LOOP(double, IDENT)
    return s;
}
#define CPLX_DOT(NAME, T, CONJ_X)                                                               \
    EXPORT void CBLAS(NAME)(blasint n, const void *xv, blasint incx, const void *yv,             \
                            blasint incy, void *out) {                                           \
        const T *x = (const T *)xv, *y = (const T *)yv;                                          \
        DOT_LOOP(T, CONJ_X)                                                                      \
        *(T *)out = s;                                                                           \
    }
CPLX_DOT(cdotu_sub, cfloat, IDENT)
CPLX_DOT(cdotc_sub, cfloat, conjf)
CPLX_DOT(zdotu_sub, cdouble, IDENT)
CPLX_DOT(zdotc_sub, cdouble, conj)

#define AXPY_LOOP                                                                               \
    blasint ix = start(n, incx), iy = start(n, incy);                                           \
    for (blasint i = 0; i < n; i++, ix += incx, iy += incy) y[iy] += alpha * x[ix];
EXPORT void CBLAS(saxpy)(blasint n, float alpha, const float *x, blasint incx, float *y,
                         blasint incy) {
    AXPY_LOOP
}
EXPORT void CBLAS(daxpy)(blasint n, double alpha, const double *x, blasint incx, double *y,
                         blasint incy) {
    AXPY_LOOP
}
#define CPLX_AXPY(NAME, T)                                                                      \
    EXPORT void CBLAS(NAME)(blasint n, const void *alphap, const void *xv, blasint incx,         \
                            void *yv, blasint incy) {                                            \
        const T *x = (const T *)xv, alpha = *(const T *)alphap;                                  \
        T *y = (T *)yv;                                                                          \
        AXPY_LOOP                                                                                \
    }
CPLX_AXPY(caxpy, cfloat)
CPLX_AXPY(zaxpy, cdouble)

/* ---- SYRK: C = alpha op(A) op(A)^T + beta C, one triangle ---------------------------------- */
#define SYRK_BODY(T)                                                                            \
    /* row-major; column-major upper is row-major lower of the same memory */                  \
    int t = trans == Trans || trans == ConjTrans;                                               \
    int up = uplo == Upper;                                                                     \
    if (order == ColMajor) {                                                                    \
        up = !up;                                                                               \
        t = !t;                                                                                 \
    }                                                                                           \
    /* op(A) is N x K: op(A)[i,p] = t ? a[p*lda+i] : a[i*lda+p] (t flipped for column-major) */ \
    for (blasint i = 0; i < n; i++)                                                             \
        for (blasint j = up ? i : 0; j <= (up ? n - 1 : i); j++) {                              \
            T s = 0;                                                                            \
            for (blasint p = 0; p < k; p++)                                                     \
                s += (t ? a[p * lda + i] : a[i * lda + p]) * (t ? a[p * lda + j] : a[j * lda + p]); \
            T *cij = c + i * ldc + j;                                                           \
            *cij = alpha * s + (beta == 0 ? 0 : beta * *cij);                                   \
        }

EXPORT void CBLAS(ssyrk)(int order, int uplo, int trans, blasint n, blasint k, float alpha,
                         const float *a, blasint lda, float beta, float *c, blasint ldc) {
    SYRK_BODY(float)
}
EXPORT void CBLAS(dsyrk)(int order, int uplo, int trans, blasint n, blasint k, double alpha,
                         const double *a, blasint lda, double beta, double *c, blasint ldc) {
    SYRK_BODY(double)
}
#define CPLX_SYRK(NAME, T)                                                                      \
    EXPORT void CBLAS(NAME)(int order, int uplo, int trans, blasint n, blasint k,                \
                            const void *alphap, const void *av, blasint lda, const void *betap,  \
                            void *cv, blasint ldc) {                                             \
        const T *a = (const T *)av;                                                              \
        T *c = (T *)cv, alpha = *(const T *)alphap, beta = *(const T *)betap;                    \
        SYRK_BODY(T)                                                                             \
    }
CPLX_SYRK(csyrk, cfloat)
CPLX_SYRK(zsyrk, cdouble)

/* ---- LAPACK: not here ---------------------------------------------------------------------- */
static void missing(const char *name) {
    fprintf(stderr,
            "zerostart minimal BLAS: LAPACK routine %s (numpy.linalg) is not in this image; "
            "build the image with `zerostart build --blas openblas`\n",
            name);
    abort();
}
#define STR_(x) #x
#define STR(x) STR_(x)
#define NO_LAPACK(name) \
    EXPORT void LAPACK(name)(void) { missing(STR(LAPACK(name))); }
NO_LAPACK(scopy) NO_LAPACK(dcopy) NO_LAPACK(ccopy) NO_LAPACK(zcopy)
NO_LAPACK(sgesv) NO_LAPACK(dgesv) NO_LAPACK(cgesv) NO_LAPACK(zgesv)
NO_LAPACK(sgetrf) NO_LAPACK(dgetrf) NO_LAPACK(cgetrf) NO_LAPACK(zgetrf)
NO_LAPACK(spotrf) NO_LAPACK(dpotrf) NO_LAPACK(cpotrf) NO_LAPACK(zpotrf)
NO_LAPACK(sgesdd) NO_LAPACK(dgesdd) NO_LAPACK(cgesdd) NO_LAPACK(zgesdd)
NO_LAPACK(sgelsd) NO_LAPACK(dgelsd) NO_LAPACK(cgelsd) NO_LAPACK(zgelsd)
NO_LAPACK(sgeev) NO_LAPACK(dgeev) NO_LAPACK(zgeev)
NO_LAPACK(ssyevd) NO_LAPACK(dsyevd) NO_LAPACK(cheevd) NO_LAPACK(zheevd)
NO_LAPACK(dgeqrf) NO_LAPACK(zgeqrf) NO_LAPACK(dorgqr) NO_LAPACK(zungqr)
