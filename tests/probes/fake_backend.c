/*
 * A program that the guard's refusal policy takes for a PostgreSQL client backend in a state
 * where an ERROR is safe: it exports the globals the guard looks up (built with -rdynamic), with
 * a client backend's values, and a GetConfigOption that answers oomguard.backend_memory_limit
 * from FAKE_BUDGET_SETTING. It stands in for what no PostgreSQL here can show: a thread that an
 * extension starts inside a backend.
 *
 *   fake_backend SIZE COUNT   the main thread allocates SIZE-byte blocks until refused (at most
 *                             COUNT), prints "main refused after N"; then a second thread
 *                             allocates COUNT blocks, prints "thread got N errno=E"; frees all.
 *   fake_backend error-path   allocates 1 MiB blocks until refused; then, as PostgreSQL's error
 *                             handling does, 1144 KiB in ErrorContext (never refused), then
 *                             32 KiB back in a refusable context (what AbortTransaction
 *                             allocates); prints "error context: ok|NULL" and
 *                             "after: ok|NULL".
 */
#include <string.h>
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int MyBackendType = 1;
bool IsUnderPostmaster = true;
volatile uint32_t CritSectionCount = 0;
static char exception_buffer[64];
void *PG_exception_stack = exception_buffer;
bool proc_exit_inprogress = false;
static char contexts[2];
void *CurrentMemoryContext = &contexts[0];
void *ErrorContext = &contexts[1];
void *MyBgworkerEntry = NULL;
bool ExitOnAnyError = false;

const char *GetBackendTypeDesc(int type) {
    (void)type;
    return "client backend";
}

const char *GetConfigOption(const char *name, bool missing_ok, bool restrict_privileged) {
    (void)name;
    (void)missing_ok;
    (void)restrict_privileged;
    return getenv("FAKE_BUDGET_SETTING");
}

enum { MAX = 4096 };
static void *main_blocks[MAX], *thread_blocks[MAX];
static size_t size;
static long count;

static void *allocate_in_thread(void *unused) {
    (void)unused;
    long n = 0;
    errno = 0;
    while (n < count) {
        void *p = malloc(size);
        if (!p) break;
        thread_blocks[n++] = p;
    }
    printf("thread got %ld errno=%d\n", n, errno);
    for (long i = 0; i < n; i++) free(thread_blocks[i]);
    return NULL;
}

/* After a refusal: what error handling allocates must be served. */
static int error_path(void) {
    long n = 0;
    while (n < MAX) {
        void *p = malloc(1 << 20);
        if (!p) break;
        main_blocks[n++] = p;
    }
    printf("main refused after %ld\n", n);
    void *saved = CurrentMemoryContext;
    CurrentMemoryContext = ErrorContext;
    /* 1 MiB (past the budget) needs a reservation, with a batch of 128 KiB on top; 120 KiB
     * more uses up that batch, so that the next request needs a reservation again. */
    void *in_error_context = malloc(1 << 20);
    void *more_in_error_context = malloc(120 << 10);
    printf("error context: %s\n", in_error_context && more_in_error_context ? "ok" : "NULL");
    CurrentMemoryContext = saved;
    void *after = malloc(32 << 10);
    printf("after: %s\n", after ? "ok" : "NULL");
    free(after);
    free(more_in_error_context);
    free(in_error_context);
    for (long i = 0; i < n; i++) free(main_blocks[i]);
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 2 && strcmp(argv[1], "error-path") == 0) return error_path();
    if (argc < 3) return 2;
    size = strtoull(argv[1], NULL, 10);
    count = atol(argv[2]);
    if (count > MAX) count = MAX;
    long n = 0;
    while (n < count) {
        void *p = malloc(size);
        if (!p) break;
        main_blocks[n++] = p;
    }
    printf("main refused after %ld\n", n);
    fflush(stdout);
    pthread_t thread;
    if (pthread_create(&thread, NULL, allocate_in_thread, NULL) != 0) return 3;
    pthread_join(thread, NULL);
    for (long i = 0; i < n; i++) free(main_blocks[i]);
    return 0;
}
