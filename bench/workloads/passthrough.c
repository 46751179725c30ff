/*
 * passthrough.c: the floor of the benchmark, a pure pass-through LD_PRELOAD interposer.
 *
 * It exports the ten allocation functions that liboomguard.so interposes and forwards each one
 * to glibc's own entry point (`__libc_malloc`, `__libc_free`, ...), doing nothing else. Whatever
 * it costs over plain glibc is what any interposer costs: the extra call from the program's PLT
 * into this library and the jump on to glibc. oomguard-bench runs it as a third side beside
 * plain glibc and the guard, so that the guard's own cost reads as guard minus floor.
 *
 * Where glibc's public function checks its arguments before reaching the `__libc_*` core, this
 * file repeats the check, so that the floor behaves as glibc does (the workloads do not call
 * these, but a floor that fails differently would not be a pass-through):
 *   - reallocarray: multiplication overflow -> ENOMEM, then __libc_realloc;
 *   - posix_memalign: alignment a power-of-two multiple of sizeof(void *), else EINVAL;
 *   - aligned_alloc: alignment a power of two, else EINVAL (glibc 2.38 and later only; before
 *     2.38 aligned_alloc is memalign, and so it is here when built against such a glibc);
 *   - valloc, pvalloc: __libc_memalign at the page size (pvalloc rounds the size up to whole
 *     pages, ENOMEM if that overflows), as glibc's own valloc and pvalloc do.
 *
 * Built by bench/build.rs as a shared library (`libpassthrough.so` in OUT_DIR) with -fno-plt,
 * so that the forwarding is a single indirect jump through the GOT, as in the Rust guard.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <malloc.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <unistd.h>

/* glibc's allocator proper, exported by libc.so.6 (GLIBC_2.2.5) and not interposable. */
extern void *__libc_malloc(size_t size);
extern void __libc_free(void *ptr);
extern void *__libc_calloc(size_t count, size_t size);
extern void *__libc_realloc(void *ptr, size_t size);
extern void *__libc_memalign(size_t alignment, size_t size);

#define EXPORT __attribute__((visibility("default")))

static inline int power_of_two(size_t x) { return x != 0 && (x & (x - 1)) == 0; }

EXPORT void *malloc(size_t size) { return __libc_malloc(size); }

EXPORT void free(void *ptr) { __libc_free(ptr); }

EXPORT void *calloc(size_t count, size_t size) {
    /* __libc_calloc checks count * size for overflow itself. */
    return __libc_calloc(count, size);
}

EXPORT void *realloc(void *ptr, size_t size) { return __libc_realloc(ptr, size); }

EXPORT void *reallocarray(void *ptr, size_t count, size_t size) {
    size_t bytes;
    if (__builtin_mul_overflow(count, size, &bytes)) {
        errno = ENOMEM;
        return NULL;
    }
    return __libc_realloc(ptr, bytes);
}

EXPORT int posix_memalign(void **out, size_t alignment, size_t size) {
    if (alignment % sizeof(void *) != 0 || !power_of_two(alignment / sizeof(void *)))
        return EINVAL;
    void *block = __libc_memalign(alignment, size);
    if (block == NULL)
        return ENOMEM;
    *out = block;
    return 0;
}

EXPORT void *aligned_alloc(size_t alignment, size_t size) {
#if __GLIBC_PREREQ(2, 38)
    if (!power_of_two(alignment)) {
        errno = EINVAL;
        return NULL;
    }
#endif
    return __libc_memalign(alignment, size);
}

EXPORT void *memalign(size_t alignment, size_t size) { return __libc_memalign(alignment, size); }

EXPORT void *valloc(size_t size) { return __libc_memalign((size_t)getpagesize(), size); }

EXPORT void *pvalloc(size_t size) {
    size_t page = (size_t)getpagesize();
    size_t rounded;
    if (__builtin_add_overflow(size, page - 1, &rounded)) {
        errno = ENOMEM;
        return NULL;
    }
    return __libc_memalign(page, rounded & ~(page - 1));
}
