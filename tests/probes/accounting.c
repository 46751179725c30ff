/* Probe for the guard's accounting, run under LD_PRELOAD by tests/tests/accounting.rs.
 *
 * Each command allocates in a known pattern, says what it did on stdout, and waits for a line on
 * stdin before going on, so the test can inspect the shared segment at well-defined moments
 * (no sleeps). Commands:
 *   hold SIZE COUNT            COUNT blocks of SIZE bytes; "held"; wait; free; "freed"; wait
 *   until-null SIZE            malloc(SIZE) until NULL; "refused after N errno=E"; free all;
 *                              "freed"; the same N blocks again: "again N"; wait
 *   threads T ROUNDS HOLD      T threads churn malloc/calloc/realloc/posix_memalign/free, then
 *                              each holds HOLD bytes; "holding"; wait; threads free and exit;
 *                              "done"; wait
 *   fork SIZE HOW [late]       parent holds 8 MiB; child frees 4 MiB of it, holds SIZE (with
 *                              "late": holds SIZE first, then frees), says
 *                              "child PID", waits, then leaves by HOW (exit|_exit); parent
 *                              waits for it: "child gone"; wait
 *   exec SIZE                  holds SIZE, then execs itself as "hold 1048576 4"
 *   refused-calls LIMIT_HINT   every allocating function, asked for more than the limit:
 *                              prints one line per function with the result and errno
 *   overdraft SIZE             malloc(SIZE) until NULL, three times in a row: "round R N" each
 *                              (after the first refusal only the overdraft is left); wait
 *   nothing-to-reserve SIZE    under OOM_GUARD_TEST_INJECT=1: a thread that owes the pool and
 *                              has no overdraft left shrinks a block by 10 bytes and reallocs
 *                              another to 0: "nothing-to-reserve owing shrink=R errno=E
 *                              zero=R errno=E"; wait
 *   consumer COUNT SIZE [ROUNDS] the main thread allocates COUNT blocks, another thread frees
 *                              them all and exits (ROUNDS times, default 1); "consumed"; wait
 *   dlerror-kept SIZE          dlopen of a missing library (a pending dlerror() message), then
 *                              malloc(SIZE) until NULL (the guard decides a refusal), then
 *                              "dlerror MESSAGE" with what dlerror() says now; wait
 *   impossible SIZE            malloc, calloc, realloc, posix_memalign and aligned_alloc of SIZE
 *                              bytes (more than glibc can give): "impossible N null" with the
 *                              number of NULL results; wait; then frees the realloc'd block
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
#include <sys/wait.h>
#include <unistd.h>

static void say(const char *text) {
    fputs(text, stdout);
    fputc('\n', stdout);
    fflush(stdout);
}

static void wait_line(void) {
    char line[64];
    if (!fgets(line, sizeof line, stdin)) exit(3);
}

static int hold(size_t size, long count) {
    void **blocks = calloc((size_t)count, sizeof *blocks);
    for (long i = 0; i < count; i++) {
        blocks[i] = malloc(size);
        if (!blocks[i]) { printf("malloc %ld failed\n", i); return 1; }
        memset(blocks[i], 1, size);
    }
    say("held");
    wait_line();
    for (long i = 0; i < count; i++) free(blocks[i]);
    free(blocks);
    say("freed");
    wait_line();
    return 0;
}

static int until_null(size_t size) {
    enum { MAX = 1 << 16 };
    static void *blocks[MAX];
    long n = 0;
    while (n < MAX) {
        errno = 0;
        void *p = malloc(size);
        if (!p) break;
        blocks[n++] = p;
    }
    printf("refused after %ld errno=%d\n", n, errno);
    fflush(stdout);
    for (long i = 0; i < n; i++) free(blocks[i]);
    say("freed");
    for (long i = 0; i < n; i++) {
        blocks[i] = malloc(size);
        if (!blocks[i]) { printf("again failed at %ld\n", i); return 1; }
    }
    printf("again %ld\n", n);
    fflush(stdout);
    wait_line();
    for (long i = 0; i < n; i++) free(blocks[i]);
    return 0;
}

struct worker {
    pthread_t thread;
    unsigned seed;
    long rounds;
    size_t hold;
};

static pthread_barrier_t holding, release;

static void *churn(void *arg) {
    struct worker *w = arg;
    void *ring[64] = {0};
    unsigned x = w->seed;
    for (long i = 0; i < w->rounds; i++) {
        x = x * 1103515245u + 12345u;
        unsigned slot = (x >> 8) % 64;
        size_t size = 16 + (x >> 16) % 2048;
        switch ((x >> 4) % 5) {
        case 0: free(ring[slot]); ring[slot] = malloc(size); break;
        case 1: free(ring[slot]); ring[slot] = calloc(1, size); break;
        case 2: {
            void *p = realloc(ring[slot], size);
            if (p) ring[slot] = p;
            break;
        }
        case 3: {
            void *p = NULL;
            free(ring[slot]);
            ring[slot] = posix_memalign(&p, 64, size) == 0 ? p : NULL;
            break;
        }
        default: free(ring[slot]); ring[slot] = NULL; break;
        }
    }
    for (int i = 0; i < 64; i++) free(ring[i]);
    void *held = malloc(w->hold);
    memset(held, 1, w->hold);
    pthread_barrier_wait(&holding);
    pthread_barrier_wait(&release);
    free(held);
    return NULL;
}

static int threads(int count, long rounds, size_t hold_size) {
    struct worker workers[16];
    if (count < 1 || count > 16) return 2;
    pthread_barrier_init(&holding, NULL, (unsigned)count + 1);
    pthread_barrier_init(&release, NULL, (unsigned)count + 1);
    for (int i = 0; i < count; i++) {
        workers[i] = (struct worker){.seed = 7u + (unsigned)i, .rounds = rounds, .hold = hold_size};
        pthread_create(&workers[i].thread, NULL, churn, &workers[i]);
    }
    pthread_barrier_wait(&holding);
    say("holding");
    wait_line();
    pthread_barrier_wait(&release);
    for (int i = 0; i < count; i++) pthread_join(workers[i].thread, NULL);
    say("done");
    wait_line();
    return 0;
}

static int fork_child(size_t size, const char *how, int late) {
    enum { PARENT_BLOCKS = 8 };
    void *parent[PARENT_BLOCKS];
    for (int i = 0; i < PARENT_BLOCKS; i++) {
        parent[i] = malloc(1 << 20);
        memset(parent[i], 1, 1 << 20);
    }
    pid_t child = fork();
    if (child < 0) return 2;
    if (child == 0) {
        void *mine = NULL;
        if (late) {
            mine = malloc(size);
            memset(mine, 2, size);
        }
        for (int i = 0; i < PARENT_BLOCKS / 2; i++) free(parent[i]);
        if (!late) {
            mine = malloc(size);
            memset(mine, 2, size);
        }
        printf("child %d\n", (int)getpid());
        fflush(stdout);
        wait_line();
        if (strcmp(how, "_exit") == 0) _exit(0);
        exit(0);
    }
    int status;
    waitpid(child, &status, 0);
    say("child gone");
    wait_line();
    return 0;
}

static int exec_self(size_t size, const char *self) {
    void *block = malloc(size);
    memset(block, 1, size);
    execl(self, self, "hold", "1048576", "4", (char *)NULL);
    perror("execl");
    return 2;
}

static void show(const char *call, void *p) {
    printf("%s %s errno=%d\n", call, p ? "ok" : "NULL", errno);
    free(p);
}

static int refused_calls(size_t size) {
    void *p = NULL;
    errno = 0; show("malloc", malloc(size));
    errno = 0; show("calloc", calloc(size / 8, 8));
    errno = 0;
    void *small = malloc(64);
    void *grown = realloc(small, size);
    printf("realloc %s errno=%d original-kept=%d\n", grown ? "ok" : "NULL", errno,
           grown == NULL && ((volatile char *)small)[0] == ((volatile char *)small)[0]);
    free(grown ? grown : small);
    errno = 0; show("reallocarray", reallocarray(NULL, size / 8, 8));
    errno = 0;
    int rc = posix_memalign(&p, 64, size);
    printf("posix_memalign rc=%d errno=%d\n", rc, errno);
    if (rc == 0) free(p);
    errno = 0; show("aligned_alloc", aligned_alloc(64, size));
    errno = 0; show("memalign", memalign(64, size));
    errno = 0; show("valloc", valloc(size));
    errno = 0; show("pvalloc", pvalloc(size));
    fflush(stdout);
    return 0;
}

static int overdraft(size_t size) {
    enum { MAX = 1 << 16 };
    static void *blocks[MAX];
    long n = 0;
    for (int round = 1; round <= 3; round++) {
        long start = n;
        while (n < MAX) {
            void *p = malloc(size);
            if (!p) break;
            blocks[n++] = p;
        }
        printf("round %d %ld\n", round, n - start);
        fflush(stdout);
    }
    wait_line();
    for (long i = 0; i < n; i++) free(blocks[i]);
    return 0;
}

/* Run with every refusable reservation refused (OOM_GUARD_TEST_INJECT=1), so only the overdraft
 * serves (armed by the first refusal, which may come before main). malloc(SIZE) until the
 * overdraft is used up, then malloc(0) until NULL, leaves the thread owing a few bytes (glibc's
 * blocks are larger than what the overdraft reserves, exactly the request) with nothing left to
 * cover them. A realloc that does not grow needs nothing from the pool: a shrink of one of the
 * last two blocks by 10 bytes, then a realloc of the other to 0 bytes (which frees), must both
 * succeed and leave errno alone. */
static int nothing_to_reserve(size_t size) {
    void *shrunk = NULL, *freed = NULL;
    int nulls = 0;
    while (nulls < 2) { /* the refusal that arms the overdraft, then the one that ends it */
        void *p = malloc(size);
        if (p == NULL) {
            nulls++;
        } else {
            shrunk = freed;
            freed = p;
        }
    }
    long owing = 0;
    while (malloc(0) != NULL) owing++;
    errno = 0;
    void *result = realloc(shrunk, size - 10);
    int shrink_errno = errno;
    errno = 0;
    void *zero = realloc(freed, 0);
    int zero_errno = errno;
    printf("nothing-to-reserve %s shrink=%s errno=%d zero=%s errno=%d\n",
           shrunk != NULL && owing > 0 ? "owing" : "not-owing", result != NULL ? "block" : "NULL",
           shrink_errno, zero == NULL ? "NULL" : "block", zero_errno);
    fflush(stdout);
    wait_line();
    return 0;
}

struct handoff {
    void **blocks;
    long count;
};

static void *consume(void *arg) {
    struct handoff *h = arg;
    for (long i = 0; i < h->count; i++) free(h->blocks[i]);
    return NULL;
}

static int consumer(long count, size_t size, long rounds) {
    for (long round = 0; round < rounds; round++) {
        void **blocks = calloc((size_t)count, sizeof *blocks);
        for (long i = 0; i < count; i++) {
            blocks[i] = malloc(size);
            memset(blocks[i], 1, size);
        }
        struct handoff h = {.blocks = blocks, .count = count};
        pthread_t thread;
        pthread_create(&thread, NULL, consume, &h);
        pthread_join(thread, NULL);
        free(blocks);
    }
    say("consumed");
    wait_line();
    return 0;
}

static int dlerror_kept(size_t size) {
    void *blocks[4096];
    int n = 0;
    if (dlopen("liboomguard-probe-missing.so", RTLD_NOW) != NULL) return 2;
    while (n < 4096 && (blocks[n] = malloc(size)) != NULL) n++;
    const char *message = dlerror();
    printf("dlerror %s\n", message ? message : "(none)");
    fflush(stdout);
    for (int i = 0; i < n; i++) free(blocks[i]);
    wait_line();
    return 0;
}

static int impossible(size_t size) {
    int nulls = 0;
    void *small = malloc(64);
    void *out = NULL;
    nulls += malloc(size) == NULL;
    nulls += calloc(1, size) == NULL;
    nulls += realloc(small, size) == NULL;
    nulls += posix_memalign(&out, 64, size) == ENOMEM;
    nulls += aligned_alloc(64, size) == NULL;
    /* No free before the test looks: a free's release would hide what the failed calls kept. */
    printf("impossible %d null\n", nulls);
    fflush(stdout);
    wait_line();
    free(small);
    return 0;
}

int main(int argc, char **argv) {
    if (argc >= 4 && strcmp(argv[1], "hold") == 0)
        return hold(strtoull(argv[2], NULL, 10), atol(argv[3]));
    if (argc >= 3 && strcmp(argv[1], "until-null") == 0)
        return until_null(strtoull(argv[2], NULL, 10));
    if (argc >= 5 && strcmp(argv[1], "threads") == 0)
        return threads(atoi(argv[2]), atol(argv[3]), strtoull(argv[4], NULL, 10));
    if (argc >= 4 && strcmp(argv[1], "fork") == 0)
        return fork_child(strtoull(argv[2], NULL, 10), argv[3],
                          argc >= 5 && strcmp(argv[4], "late") == 0);
    if (argc >= 3 && strcmp(argv[1], "exec") == 0)
        return exec_self(strtoull(argv[2], NULL, 10), argv[0]);
    if (argc >= 3 && strcmp(argv[1], "overdraft") == 0)
        return overdraft(strtoull(argv[2], NULL, 10));
    if (argc >= 4 && strcmp(argv[1], "consumer") == 0)
        return consumer(atol(argv[2]), strtoull(argv[3], NULL, 10), argc >= 5 ? atol(argv[4]) : 1);
    if (argc >= 3 && strcmp(argv[1], "dlerror-kept") == 0)
        return dlerror_kept(strtoull(argv[2], NULL, 10));
    if (argc >= 3 && strcmp(argv[1], "impossible") == 0)
        return impossible(strtoull(argv[2], NULL, 10));
    if (argc >= 3 && strcmp(argv[1], "nothing-to-reserve") == 0)
        return nothing_to_reserve(strtoull(argv[2], NULL, 10));
    if (argc >= 3 && strcmp(argv[1], "refused-calls") == 0)
        return refused_calls(strtoull(argv[2], NULL, 10));
    fprintf(stderr, "usage: see the comment at the top of accounting.c\n");
    return 2;
}
