/* Memory read bandwidth of this machine: T threads each stream their share
 * of a 512 MiB buffer five times with 32-byte AVX2 loads (the access pattern
 * of a decode step, which reads every weight once). Prints GB/s.
 * Built and run by scripts/bench_llama_cpp.sh: cc -O2 -mavx2 -pthread. */
#include <immintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define BYTES (512L * 1024 * 1024)
#define PASSES 5
static char *buffer;
static long threads;

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static void *stream(void *arg) {
    long id = (long)arg, share = BYTES / threads;
    __m256i acc = _mm256_setzero_si256();
    for (int pass = 0; pass < PASSES; pass++)
        for (long i = id * share; i < (id + 1) * share; i += 32)
            acc = _mm256_add_epi64(acc, _mm256_load_si256((__m256i *)(buffer + i)));
    long *sink = malloc(32);
    _mm256_storeu_si256((__m256i *)sink, acc);
    return sink;
}

int main(int argc, char **argv) {
    threads = argc > 1 ? atol(argv[1]) : 1;
    if (threads < 1 || threads > 256) return 2;
    buffer = aligned_alloc(64, BYTES);
    if (!buffer) return 1;
    memset(buffer, 1, BYTES);
    pthread_t workers[256];
    double start = now();
    for (long i = 0; i < threads; i++) pthread_create(&workers[i], 0, stream, (void *)i);
    for (long i = 0; i < threads; i++) {
        void *sink;
        pthread_join(workers[i], &sink);
        free(sink);
    }
    printf("%.1f\n", PASSES * (double)BYTES / (now() - start) / 1e9);
    return 0;
}
