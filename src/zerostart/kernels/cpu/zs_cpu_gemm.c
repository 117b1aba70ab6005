/* zerostart CPU kernels: reduced-precision matrix products (filled in below). */
#include <stdint.h>

/* Bit 0: int8 (AVX-512 VNNI) products compiled in; bit 1: bf16 (AVX-512 BF16). */
int zs_precisions(void) {
    int p = 0;
#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
    p |= 1;
#endif
#if defined(__AVX512BF16__) && defined(__AVX512BW__)
    p |= 2;
#endif
    return p;
}
