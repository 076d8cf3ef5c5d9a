/* Peak f32 FMA throughput of one core: twelve independent AVX2 FMA chains
 * (enough to cover the FMA latency on two pipes), the ceiling for a GEMM
 * micro-kernel. Prints GFLOP/s (2 flops x 8 lanes per FMA).
 * Build and run: cc -O2 -mavx2 -mfma scripts/fmapeak.c -o fmapeak && ./fmapeak */
#include <immintrin.h>
#include <stdio.h>
#include <time.h>

#define STEP(x) x = _mm256_fmadd_ps(x, b, c);

int main(void) {
    __m256 a0 = _mm256_set1_ps(0.1f), a1 = _mm256_set1_ps(0.2f), a2 = _mm256_set1_ps(0.3f),
           a3 = _mm256_set1_ps(0.4f), a4 = _mm256_set1_ps(0.5f), a5 = _mm256_set1_ps(0.6f),
           a6 = _mm256_set1_ps(0.7f), a7 = _mm256_set1_ps(0.8f), a8 = _mm256_set1_ps(0.9f),
           a9 = _mm256_set1_ps(1.1f), a10 = _mm256_set1_ps(1.2f), a11 = _mm256_set1_ps(1.3f);
    __m256 b = _mm256_set1_ps(0.9999f), c = _mm256_set1_ps(0.0001f);
    const long steps = 200000000;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (long k = 0; k < steps; k++) {
        STEP(a0) STEP(a1) STEP(a2) STEP(a3) STEP(a4) STEP(a5)
        STEP(a6) STEP(a7) STEP(a8) STEP(a9) STEP(a10) STEP(a11)
        /* Keeps b opaque, so the chains cannot be folded. */
        __asm__ volatile("" : "+x"(b));
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double s = (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) * 1e-9;
    __m256 sum = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)),
                               _mm256_add_ps(_mm256_add_ps(a4, a5), _mm256_add_ps(a6, a7)));
    sum = _mm256_add_ps(sum, _mm256_add_ps(_mm256_add_ps(a8, a9), _mm256_add_ps(a10, a11)));
    float out[8];
    _mm256_storeu_ps(out, sum);
    printf("%.1f GFLOP/s per core (checksum %.3f)\n", steps * 12 * 16 / s / 1e9, out[0]);
    return 0;
}
