/*
 * semantics.c: exercises every function liboomguard.so interposes and prints what glibc's
 * observable behaviour is, one deterministic line per fact (no addresses). The test
 * `tests/tests/semantics.rs` runs it plainly and under LD_PRELOAD of the guard and requires
 * identical output: below the limit the guard must be invisible.
 *
 *   semantics           print the semantics lines
 *   semantics --which NAME...   print, for each function NAME, which object
 *                       dlsym(RTLD_DEFAULT, NAME) resolves into ("liboomguard" or a basename)
 *
 * Every request stays far below the 1 GiB limit the test gives the guard, except requests that
 * glibc itself must refuse (SIZE_MAX and friends), whose errno must also match.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define SENTINEL 4242

/* Sizes hidden from the optimizer: gcc must neither fold nor warn about huge requests. */
static volatile size_t v_size_max = SIZE_MAX;
static volatile size_t v_half = SIZE_MAX / 2;
static volatile size_t v_ptrdiff_over = (size_t)PTRDIFF_MAX + 1;
static volatile size_t v_zero = 0;

/* Keep allocations and errno accesses from being optimized away or reordered. */
static void escape(void *p) { __asm__ volatile("" : : "r"(p) : "memory"); }
static int get_errno(void) {
    __asm__ volatile("" : : : "memory");
    return errno;
}
static void set_errno(int e) {
    errno = e;
    __asm__ volatile("" : : : "memory");
}

static const char *en(int e) {
    static char buf[4][32];
    static int next;
    switch (e) {
    case 0: return "0";
    case ENOMEM: return "ENOMEM";
    case EINVAL: return "EINVAL";
    case SENTINEL: return "sentinel";
    default: {
        char *b = buf[next++ % 4];
        snprintf(b, sizeof buf[0], "%d", e);
        return b;
    }
    }
}

static const char *yesno(int b) { return b ? "yes" : "no"; }
static int aligned(const void *p, size_t a) { return ((uintptr_t)p % a) == 0; }
static size_t page(void) { return (size_t)sysconf(_SC_PAGESIZE); }

static void fill(unsigned char *p, size_t n, unsigned seed) {
    for (size_t i = 0; i < n; i++)
        p[i] = (unsigned char)(i * 31u + seed);
}
static int check(const unsigned char *p, size_t n, unsigned seed) {
    for (size_t i = 0; i < n; i++)
        if (p[i] != (unsigned char)(i * 31u + seed))
            return 0;
    return 1;
}
static int all_zero(const unsigned char *p, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (p[i] != 0)
            return 0;
    return 1;
}

/* ---- malloc / free ----------------------------------------------------------------------- */

static void t_malloc(void) {
    set_errno(SENTINEL);
    void *p = malloc(v_zero);
    int e = get_errno();
    escape(p);
    printf("malloc(0): non-NULL=%s aligned16=%s errno=%s\n", yesno(p != NULL), yesno(aligned(p, 16)),
           en(e));
    free(p);

    static const size_t sizes[] = {1,    8,     15,     16,     17,      24,      100,
                                   512,  1000,  4096,   65536,  131072,  262144,  4u << 20};
    int all_aligned = 1, all_nonnull = 1, usable_ok = 1;
    set_errno(SENTINEL);
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        unsigned char *q = malloc(sizes[i]);
        escape(q);
        all_nonnull &= q != NULL;
        all_aligned &= aligned(q, 16);
        usable_ok &= q != NULL && malloc_usable_size(q) >= sizes[i];
        if (q)
            memset(q, 0x5a, sizes[i]);
        free(q);
    }
    int e2 = get_errno();
    printf("malloc 1 B..4 MiB: non-NULL=%s aligned16=%s usable>=request=%s errno=%s\n",
           yesno(all_nonnull), yesno(all_aligned), yesno(usable_ok), en(e2));

    set_errno(SENTINEL);
    p = malloc(v_size_max);
    e = get_errno();
    printf("malloc(SIZE_MAX): NULL=%s errno=%s\n", yesno(p == NULL), en(e));
    free(p);

    set_errno(SENTINEL);
    p = malloc(v_ptrdiff_over);
    e = get_errno();
    printf("malloc(PTRDIFF_MAX+1): NULL=%s errno=%s\n", yesno(p == NULL), en(e));
    free(p);
}

static void t_free(void) {
    set_errno(1234);
    free(NULL);
    printf("free(NULL): errno=%s\n", en(get_errno()));

    void *small = malloc(100);
    void *big = malloc(8u << 20); /* mmapped chunk: free calls munmap */
    escape(small);
    escape(big);
    set_errno(SENTINEL);
    free(small);
    int e1 = get_errno();
    set_errno(SENTINEL);
    free(big);
    int e2 = get_errno();
    printf("free(small) errno=%s free(8 MiB) errno=%s\n", en(e1), en(e2));
}

/* ---- calloc ------------------------------------------------------------------------------ */

static void t_calloc(void) {
    /* Dirty some chunks so that calloc has to clear reused memory. */
    unsigned char *dirty[16];
    for (int i = 0; i < 16; i++) {
        dirty[i] = malloc(1000);
        if (dirty[i])
            memset(dirty[i], 0xab, 1000);
        escape(dirty[i]);
    }
    for (int i = 0; i < 16; i++)
        free(dirty[i]);

    set_errno(SENTINEL);
    unsigned char *p = calloc(10, 100);
    int e = get_errno();
    escape(p);
    printf("calloc(10, 100) after dirty frees: non-NULL=%s zeroed=%s errno=%s\n", yesno(p != NULL),
           yesno(p && all_zero(p, 1000)), en(e));
    free(p);

    set_errno(SENTINEL);
    p = calloc(1, 3u << 20);
    e = get_errno();
    escape(p);
    printf("calloc(1, 3 MiB): non-NULL=%s zeroed=%s errno=%s\n", yesno(p != NULL),
           yesno(p && all_zero(p, 3u << 20)), en(e));
    free(p);

    set_errno(SENTINEL);
    p = calloc(v_zero, v_zero);
    e = get_errno();
    escape(p);
    printf("calloc(0, 0): non-NULL=%s errno=%s\n", yesno(p != NULL), en(e));
    free(p);

    set_errno(SENTINEL);
    p = calloc(v_half, 4);
    e = get_errno();
    printf("calloc(SIZE_MAX/2, 4) overflow: NULL=%s errno=%s\n", yesno(p == NULL), en(e));
    free(p);

    set_errno(SENTINEL);
    p = calloc(v_size_max, 1);
    e = get_errno();
    printf("calloc(SIZE_MAX, 1): NULL=%s errno=%s\n", yesno(p == NULL), en(e));
    free(p);
}

/* ---- realloc / reallocarray -------------------------------------------------------------- */

static void t_realloc(void) {
    set_errno(SENTINEL);
    unsigned char *p = realloc(NULL, 100);
    int e = get_errno();
    escape(p);
    printf("realloc(NULL, 100): non-NULL=%s usable>=100=%s aligned16=%s errno=%s\n",
           yesno(p != NULL), yesno(p && malloc_usable_size(p) >= 100), yesno(aligned(p, 16)), en(e));
    if (p == NULL)
        return;

    fill(p, 100, 7);
    set_errno(SENTINEL);
    unsigned char *q = realloc(p, 200000);
    e = get_errno();
    escape(q);
    printf("realloc grow 100 -> 200000: non-NULL=%s contents kept=%s errno=%s\n", yesno(q != NULL),
           yesno(q && check(q, 100, 7)), en(e));
    if (q == NULL)
        return;
    p = q;

    fill(p, 200000, 9);
    set_errno(SENTINEL);
    q = realloc(p, 50);
    e = get_errno();
    escape(q);
    printf("realloc shrink 200000 -> 50: non-NULL=%s contents kept=%s errno=%s\n",
           yesno(q != NULL), yesno(q && check(q, 50, 9)), en(e));
    if (q == NULL)
        return;
    p = q;

    set_errno(SENTINEL);
    q = realloc(p, v_size_max);
    e = get_errno();
    printf("realloc(p, SIZE_MAX): NULL=%s errno=%s old block intact=%s\n", yesno(q == NULL),
           en(e), yesno(q == NULL && check(p, 50, 9)));
    if (q != NULL)
        p = q;

    set_errno(SENTINEL);
    q = realloc(p, v_zero);
    e = get_errno();
    escape(q);
    /* glibc (REALLOC_ZERO_BYTES_FREES): frees p and returns NULL. */
    printf("realloc(p, 0): NULL=%s errno=%s\n", yesno(q == NULL), en(e));
    free(q);

    set_errno(SENTINEL);
    q = realloc(NULL, v_zero);
    e = get_errno();
    escape(q);
    printf("realloc(NULL, 0): non-NULL=%s errno=%s\n", yesno(q != NULL), en(e));
    free(q);

    /* A big mmapped block grown and shrunk (mremap path in glibc). */
    p = malloc(4u << 20);
    if (p) {
        fill(p, 4096, 3);
        set_errno(SENTINEL);
        q = realloc(p, 16u << 20);
        e = get_errno();
        escape(q);
        printf("realloc grow 4 MiB -> 16 MiB: non-NULL=%s contents kept=%s errno=%s\n",
               yesno(q != NULL), yesno(q && check(q, 4096, 3)), en(e));
        free(q ? q : p);
    }
}

static void t_reallocarray(void) {
    set_errno(SENTINEL);
    unsigned char *p = reallocarray(NULL, 10, 10);
    int e = get_errno();
    escape(p);
    printf("reallocarray(NULL, 10, 10): non-NULL=%s errno=%s\n", yesno(p != NULL), en(e));
    if (p == NULL)
        return;
    fill(p, 100, 5);

    set_errno(SENTINEL);
    unsigned char *q = reallocarray(p, 100, 100);
    e = get_errno();
    escape(q);
    printf("reallocarray(p, 100, 100): non-NULL=%s contents kept=%s errno=%s\n", yesno(q != NULL),
           yesno(q && check(q, 100, 5)), en(e));
    if (q)
        p = q;

    set_errno(SENTINEL);
    q = reallocarray(p, v_half, 4);
    e = get_errno();
    printf("reallocarray(p, SIZE_MAX/2, 4) overflow: NULL=%s errno=%s old block intact=%s\n",
           yesno(q == NULL), en(e), yesno(q == NULL && check(p, 100, 5)));
    free(q ? q : p);

    set_errno(SENTINEL);
    q = reallocarray(NULL, v_half, 4);
    e = get_errno();
    printf("reallocarray(NULL, SIZE_MAX/2, 4) overflow: NULL=%s errno=%s\n", yesno(q == NULL),
           en(e));
    free(q);
}

/* ---- aligned allocation ------------------------------------------------------------------ */

static void t_posix_memalign(void) {
    static const size_t aligns[] = {8, 16, 64, 4096, 65536};
    for (size_t i = 0; i < sizeof aligns / sizeof aligns[0]; i++) {
        void *p = NULL;
        set_errno(SENTINEL);
        int rc = posix_memalign(&p, aligns[i], 100);
        int e = get_errno();
        escape(p);
        printf("posix_memalign(%zu, 100): rc=%s aligned=%s usable>=100=%s errno=%s\n", aligns[i],
               en(rc), yesno(p && aligned(p, aligns[i])), yesno(p && malloc_usable_size(p) >= 100),
               en(e));
        free(p);
    }

    static const size_t bad[] = {0, 3, 12, 24, 4 /* < sizeof(void*) */};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        void *marker = (void *)&bad; /* must stay untouched on failure */
        void *p = marker;
        set_errno(SENTINEL);
        int rc = posix_memalign(&p, bad[i], 100);
        int e = get_errno();
        printf("posix_memalign(%zu, 100): rc=%s memptr unchanged=%s errno=%s\n", bad[i], en(rc),
               yesno(p == marker), en(e));
        if (p != marker)
            free(p);
    }

    void *marker = (void *)&aligns;
    void *p = marker;
    set_errno(SENTINEL);
    int rc = posix_memalign(&p, 64, v_size_max);
    int e = get_errno();
    printf("posix_memalign(64, SIZE_MAX): rc=%s memptr unchanged=%s errno=%s\n", en(rc),
           yesno(p == marker), en(e));
    if (p != marker)
        free(p);
}

static void t_aligned_alloc(void) {
    set_errno(SENTINEL);
    void *p = aligned_alloc(64, 128);
    int e = get_errno();
    escape(p);
    printf("aligned_alloc(64, 128): non-NULL=%s aligned=%s errno=%s\n", yesno(p != NULL),
           yesno(p && aligned(p, 64)), en(e));
    free(p);

    /* C11 wants size to be a multiple of alignment; glibc does not insist. */
    set_errno(SENTINEL);
    p = aligned_alloc(64, 100);
    e = get_errno();
    escape(p);
    printf("aligned_alloc(64, 100): non-NULL=%s aligned=%s errno=%s\n", yesno(p != NULL),
           yesno(p && aligned(p, 64)), en(e));
    free(p);

    /* Non-power-of-two alignment: glibc < 2.38 rounds up (like memalign), 2.38+ fails EINVAL. */
    set_errno(SENTINEL);
    p = aligned_alloc(24, 96);
    e = get_errno();
    escape(p);
    printf("aligned_alloc(24, 96): non-NULL=%s aligned32=%s errno=%s\n", yesno(p != NULL),
           yesno(p && aligned(p, 32)), en(e));
    free(p);

    set_errno(SENTINEL);
    p = aligned_alloc(v_zero, 16);
    e = get_errno();
    escape(p);
    printf("aligned_alloc(0, 16): non-NULL=%s errno=%s\n", yesno(p != NULL), en(e));
    free(p);

    set_errno(SENTINEL);
    p = aligned_alloc(v_size_max, 16);
    e = get_errno();
    printf("aligned_alloc(SIZE_MAX, 16): NULL=%s errno=%s\n", yesno(p == NULL), en(e));
    free(p);

    set_errno(SENTINEL);
    p = aligned_alloc(64, v_size_max);
    e = get_errno();
    printf("aligned_alloc(64, SIZE_MAX): NULL=%s errno=%s\n", yesno(p == NULL), en(e));
    free(p);
}

static void t_memalign(void) {
    set_errno(SENTINEL);
    void *p = memalign(4096, 10);
    int e = get_errno();
    escape(p);
    printf("memalign(4096, 10): non-NULL=%s aligned=%s usable>=10=%s errno=%s\n",
           yesno(p != NULL), yesno(p && aligned(p, 4096)), yesno(p && malloc_usable_size(p) >= 10),
           en(e));
    free(p);

    set_errno(SENTINEL);
    p = memalign(3, 10);
    e = get_errno();
    escape(p);
    printf("memalign(3, 10): non-NULL=%s aligned16=%s errno=%s\n", yesno(p != NULL),
           yesno(p && aligned(p, 16)), en(e));
    free(p);

    set_errno(SENTINEL);
    p = memalign(v_size_max, 10);
    e = get_errno();
    printf("memalign(SIZE_MAX, 10): NULL=%s errno=%s\n", yesno(p == NULL), en(e));
    free(p);

    set_errno(SENTINEL);
    p = memalign(64, v_size_max);
    e = get_errno();
    printf("memalign(64, SIZE_MAX): NULL=%s errno=%s\n", yesno(p == NULL), en(e));
    free(p);
}

static void t_valloc(void) {
    size_t pg = page();
    set_errno(SENTINEL);
    void *p = valloc(100);
    int e = get_errno();
    escape(p);
    printf("valloc(100): non-NULL=%s page-aligned=%s usable>=100=%s errno=%s\n", yesno(p != NULL),
           yesno(p && aligned(p, pg)), yesno(p && malloc_usable_size(p) >= 100), en(e));
    free(p);

    set_errno(SENTINEL);
    p = pvalloc(100);
    e = get_errno();
    escape(p);
    printf("pvalloc(100): non-NULL=%s page-aligned=%s usable>=page=%s errno=%s\n",
           yesno(p != NULL), yesno(p && aligned(p, pg)), yesno(p && malloc_usable_size(p) >= pg), en(e));
    free(p);

    set_errno(SENTINEL);
    p = pvalloc(v_zero);
    e = get_errno();
    escape(p);
    printf("pvalloc(0): non-NULL=%s page-aligned=%s errno=%s\n", yesno(p != NULL),
           yesno(p && aligned(p, pg)), en(e));
    free(p);

    set_errno(SENTINEL);
    p = valloc(v_size_max);
    e = get_errno();
    printf("valloc(SIZE_MAX): NULL=%s errno=%s\n", yesno(p == NULL), en(e));
    free(p);

    set_errno(SENTINEL);
    p = pvalloc(v_size_max - 100);
    e = get_errno();
    printf("pvalloc(SIZE_MAX-100): NULL=%s errno=%s\n", yesno(p == NULL), en(e));
    free(p);
}

/* ---- malloc_usable_size ------------------------------------------------------------------ */

static void t_usable_size(void) {
    printf("malloc_usable_size(NULL): %zu\n", malloc_usable_size(NULL));

    /* Exact values: the guard must not add headers or change size classes. Only sizes far below
     * glibc's mmap threshold, which moves dynamically and so depends on history. */
    static const size_t sizes[] = {1, 24, 25, 100, 1000, 5000};
    printf("malloc_usable_size of malloc(n):");
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        void *p = malloc(sizes[i]);
        escape(p);
        printf(" %zu->%zu", sizes[i], p ? malloc_usable_size(p) : 0);
        free(p);
    }
    printf("\n");

    int ok = 1;
    for (size_t n = 0; n <= 4096; n += 7) {
        unsigned char *p = malloc(n);
        if (p == NULL) {
            ok = 0;
            break;
        }
        size_t u = malloc_usable_size(p);
        if (u < n)
            ok = 0;
        memset(p, 0xcd, u); /* all usable bytes are really usable */
        unsigned char *q = realloc(p, n + 1);
        if (q == NULL) {
            free(p);
            ok = 0;
            break;
        }
        if (malloc_usable_size(q) < n + 1)
            ok = 0;
        free(q);
    }
    printf("malloc_usable_size >= request for malloc and realloc, 0..4096: %s\n", yesno(ok));
}

/* ---- threads ----------------------------------------------------------------------------- */

static void *thread_alloc(void *arg) {
    (void)arg;
    unsigned char *p = malloc(300);
    if (p)
        fill(p, 300, 11);
    return p;
}

static void t_threads(void) {
    pthread_t t;
    void *ret = NULL;
    int ok = pthread_create(&t, NULL, thread_alloc, NULL) == 0 && pthread_join(t, &ret) == 0;
    ok = ok && ret != NULL && check(ret, 300, 11);
    set_errno(SENTINEL);
    free(ret); /* freed by a thread other than the (exited) allocating one */
    printf("block from an exited thread, freed by main: ok=%s errno=%s\n", yesno(ok),
           en(get_errno()));
}

/* ---- --which ----------------------------------------------------------------------------- */

static int which(int count, char **names) {
    for (int i = 0; i < count; i++) {
        void *sym = dlsym(RTLD_DEFAULT, names[i]);
        Dl_info info;
        const char *where = "unresolved";
        if (sym != NULL && dladdr(sym, &info) != 0 && info.dli_fname != NULL) {
            if (strstr(info.dli_fname, "liboomguard") != NULL) {
                where = "liboomguard";
            } else {
                const char *slash = strrchr(info.dli_fname, '/');
                where = slash ? slash + 1 : info.dli_fname;
            }
        }
        printf("%s: %s\n", names[i], where);
    }
    return 0;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc >= 2 && strcmp(argv[1], "--which") == 0)
        return which(argc - 2, argv + 2);
    if (argc != 1) {
        fprintf(stderr, "usage: %s [--which NAME...]\n", argv[0]);
        return 2;
    }
    t_malloc();
    t_free();
    t_calloc();
    t_realloc();
    t_reallocarray();
    t_posix_memalign();
    t_aligned_alloc();
    t_memalign();
    t_valloc();
    t_usable_size();
    t_threads();
    printf("done\n");
    return 0;
}
