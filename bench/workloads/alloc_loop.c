/*
 * alloc_loop.c: allocation workloads for oomguard-bench, run as a whole process so that an
 * LD_PRELOAD interposer (liboomguard.so) is measured exactly as PostgreSQL would see it.
 *
 * Usage:
 *   alloc_loop small THREADS OPS   16-512 B malloc/free, ring of 64 live objects per thread
 *   alloc_loop pglike OPS          8 KiB-1 MiB blocks, ~200 live, 1 in 8 ops is a realloc
 *   alloc_loop calloc OPS          calloc of 16 B-64 KiB then realloc growth, ring of 64 live
 *   alloc_loop fork N              fork; the child allocates a little and _exits; parent waits
 *
 * One op is one malloc+free pair (small), one alloc-or-realloc plus the free it displaces
 * (pglike, calloc), or one fork+wait (fork). For `small` every thread performs OPS ops and
 * ns_per_op is wall time / OPS, i.e. the per-thread latency of one op.
 *
 * Output (one line, key=value, parsed by oomguard-bench):
 *   workload=small threads=1 ops=N elapsed_ns=E ns_per_op=X malloc_from=libc.so.6 sink=S
 * elapsed_ns covers the workload only (CLOCK_MONOTONIC), not process start-up or exit.
 * malloc_from is the basename of the object that `malloc` resolves to (via dladdr), so the
 * caller can verify that a preload really took effect.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define RING 64u
#define PG_LIVE 200u

static volatile uint64_t g_sink;

/* Keep the compiler from eliding a malloc/free pair whose result is otherwise unused. */
static inline void escape(void *p) { __asm__ volatile("" : : "r"(p) : "memory"); }

/* xorshift64*: cheap, deterministic, per thread. */
static inline uint64_t next_rand(uint64_t *s) {
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 0x2545F4914F6CDD1DULL;
}

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void die(const char *msg) {
    fprintf(stderr, "alloc_loop: %s\n", msg);
    exit(2);
}

static void oom(const char *what) {
    fprintf(stderr, "alloc_loop: %s returned NULL (errno %d)\n", what, errno);
    exit(3);
}

static unsigned long parse_count(const char *s, const char *what) {
    char *end = NULL;
    errno = 0;
    unsigned long v = strtoul(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v == 0) {
        fprintf(stderr, "alloc_loop: bad %s: %s\n", what, s);
        exit(2);
    }
    return v;
}

/* ---- small ------------------------------------------------------------------------------- */

struct small_arg {
    unsigned long ops;
    uint64_t seed;
    uint64_t sum;
    pthread_barrier_t *start;
};

static void *small_thread(void *argp) {
    struct small_arg *a = argp;
    unsigned char *ring[RING] = {0};
    uint64_t s = a->seed, sum = 0;
    pthread_barrier_wait(a->start);
    for (unsigned long i = 0; i < a->ops; i++) {
        uint64_t r = next_rand(&s);
        unsigned idx = (unsigned)(r & (RING - 1));
        size_t size = 16 + (size_t)((r >> 8) % 497); /* 16..512 */
        free(ring[idx]);
        unsigned char *p = malloc(size);
        if (p == NULL)
            oom("malloc");
        p[0] = (unsigned char)i;
        sum += p[0];
        escape(p);
        ring[idx] = p;
    }
    for (unsigned i = 0; i < RING; i++)
        free(ring[i]);
    a->sum = sum;
    return NULL;
}

static uint64_t run_small(unsigned long threads, unsigned long ops, uint64_t *elapsed) {
    pthread_t *tids = calloc(threads, sizeof *tids);
    struct small_arg *args = calloc(threads, sizeof *args);
    pthread_barrier_t start;
    if (tids == NULL || args == NULL)
        die("setup allocation failed");
    if (pthread_barrier_init(&start, NULL, (unsigned)threads + 1) != 0)
        die("pthread_barrier_init failed");
    for (unsigned long t = 0; t < threads; t++) {
        args[t].ops = ops;
        args[t].seed = 0x9E3779B97F4A7C15ull ^ (t + 1) * 0xD1B54A32D192ED03ull;
        args[t].start = &start;
        if (pthread_create(&tids[t], NULL, small_thread, &args[t]) != 0)
            die("pthread_create failed");
    }
    pthread_barrier_wait(&start);
    uint64_t t0 = now_ns();
    uint64_t sum = 0;
    for (unsigned long t = 0; t < threads; t++) {
        pthread_join(tids[t], NULL);
        sum += args[t].sum;
    }
    *elapsed = now_ns() - t0;
    pthread_barrier_destroy(&start);
    free(args);
    free(tids);
    return sum;
}

/* ---- pglike ------------------------------------------------------------------------------ */

/* 8 KiB .. 1 MiB, skewed towards the small end like memory-context blocks. */
static size_t pg_size(uint64_t r) {
    unsigned shift = (unsigned)(r % 8);       /* 8 KiB << 0..7 = 8 KiB .. 1 MiB */
    size_t base = (size_t)8192 << shift;
    return base + (size_t)((r >> 16) % base); /* up to 2x base, capped below */
}

static uint64_t run_pglike(unsigned long ops, uint64_t *elapsed) {
    unsigned char *live[PG_LIVE] = {0};
    size_t sizes[PG_LIVE] = {0};
    uint64_t s = 0x243F6A8885A308D3ull, sum = 0;
    uint64_t t0 = now_ns();
    for (unsigned long i = 0; i < ops; i++) {
        uint64_t r = next_rand(&s);
        unsigned idx = (unsigned)((r >> 40) % PG_LIVE);
        size_t size = pg_size(r);
        if (size > (size_t)1 << 20)
            size = (size_t)1 << 20;
        if (live[idx] != NULL && (r >> 60) == 0) { /* 1 in 16: realloc to a new size */
            unsigned char *p = realloc(live[idx], size);
            if (p == NULL)
                oom("realloc");
            live[idx] = p;
        } else if (live[idx] != NULL && (r >> 60) == 1) { /* 1 in 16: realloc shrink */
            size_t smaller = sizes[idx] / 2 + 1;
            unsigned char *p = realloc(live[idx], smaller);
            if (p == NULL)
                oom("realloc");
            live[idx] = p;
            size = smaller;
        } else {
            free(live[idx]);
            live[idx] = malloc(size);
            if (live[idx] == NULL)
                oom("malloc");
        }
        sizes[idx] = size;
        live[idx][0] = (unsigned char)i;
        live[idx][size - 1] = (unsigned char)(i >> 8);
        sum += live[idx][0];
        escape(live[idx]);
    }
    for (unsigned i = 0; i < PG_LIVE; i++)
        free(live[i]);
    *elapsed = now_ns() - t0;
    return sum;
}

/* ---- calloc ------------------------------------------------------------------------------ */

static uint64_t run_calloc(unsigned long ops, uint64_t *elapsed) {
    unsigned char *ring[RING] = {0};
    uint64_t s = 0x13198A2E03707344ull, sum = 0;
    uint64_t t0 = now_ns();
    for (unsigned long i = 0; i < ops; i++) {
        uint64_t r = next_rand(&s);
        unsigned idx = (unsigned)(r & (RING - 1));
        /* 16 B .. 64 KiB, mostly small: n elements of 2^k bytes. */
        size_t elem = (size_t)1 << ((r >> 8) % 5);        /* 1..16 */
        size_t n = 16 + (size_t)((r >> 16) % ((r >> 40) % 16 == 0 ? 4096 : 64));
        free(ring[idx]);
        unsigned char *p = calloc(n, elem);
        if (p == NULL)
            oom("calloc");
        sum += p[n * elem - 1];
        if ((r >> 60) < 8) { /* half of them grow once */
            unsigned char *q = realloc(p, n * elem * 2);
            if (q == NULL)
                oom("realloc");
            p = q;
            p[n * elem * 2 - 1] = 1;
        }
        escape(p);
        ring[idx] = p;
    }
    for (unsigned i = 0; i < RING; i++)
        free(ring[i]);
    *elapsed = now_ns() - t0;
    return sum;
}

/* ---- fork -------------------------------------------------------------------------------- */

static uint64_t run_fork(unsigned long n, uint64_t *elapsed) {
    uint64_t sum = 0;
    /* Like the postmaster, the parent has allocated before it forks (so a preloaded guard has
     * attached in the parent and the children inherit that state); not timed. */
    for (unsigned j = 0; j < 16; j++) {
        void *p = malloc(1024);
        escape(p);
        free(p);
    }
    uint64_t t0 = now_ns();
    for (unsigned long i = 0; i < n; i++) {
        pid_t pid = fork();
        if (pid < 0)
            die("fork failed");
        if (pid == 0) {
            unsigned char *blocks[32];
            for (unsigned j = 0; j < 32; j++) {
                blocks[j] = malloc(64 + j * 256);
                if (blocks[j] == NULL)
                    _exit(3);
                blocks[j][0] = (unsigned char)j;
                escape(blocks[j]);
            }
            for (unsigned j = 0; j < 32; j += 2)
                free(blocks[j]);
            _exit(0);
        }
        int status = 0;
        if (waitpid(pid, &status, 0) != pid)
            die("waitpid failed");
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
            die("child failed");
        sum += (uint64_t)WEXITSTATUS(status) + 1;
    }
    *elapsed = now_ns() - t0;
    return sum;
}

/* ---- main -------------------------------------------------------------------------------- */

static const char *malloc_origin(void) {
    Dl_info info;
    void *sym = dlsym(RTLD_DEFAULT, "malloc");
    if (sym == NULL || dladdr(sym, &info) == 0 || info.dli_fname == NULL)
        return "unknown";
    const char *slash = strrchr(info.dli_fname, '/');
    return slash ? slash + 1 : info.dli_fname;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s small THREADS OPS | pglike OPS | calloc OPS | fork N\n",
                argv[0]);
        return 2;
    }
    const char *w = argv[1];
    unsigned long threads = 1, ops;
    uint64_t elapsed = 0, sum;
    if (strcmp(w, "small") == 0) {
        if (argc != 4)
            die("small needs THREADS OPS");
        threads = parse_count(argv[2], "THREADS");
        ops = parse_count(argv[3], "OPS");
        sum = run_small(threads, ops, &elapsed);
    } else if (argc != 3) {
        die("too many arguments");
    } else if (strcmp(w, "pglike") == 0) {
        ops = parse_count(argv[2], "OPS");
        sum = run_pglike(ops, &elapsed);
    } else if (strcmp(w, "calloc") == 0) {
        ops = parse_count(argv[2], "OPS");
        sum = run_calloc(ops, &elapsed);
    } else if (strcmp(w, "fork") == 0) {
        ops = parse_count(argv[2], "N");
        sum = run_fork(ops, &elapsed);
    } else {
        fprintf(stderr, "alloc_loop: unknown workload %s\n", w);
        return 2;
    }
    g_sink = sum;
    printf("workload=%s threads=%lu ops=%lu elapsed_ns=%llu ns_per_op=%.3f malloc_from=%s "
           "sink=%llu\n",
           w, threads, ops, (unsigned long long)elapsed, (double)elapsed / (double)ops,
           malloc_origin(), (unsigned long long)g_sink);
    return 0;
}
