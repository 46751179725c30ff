/* Probe for dynamic shared memory accounting, run under LD_PRELOAD by tests/tests/shared.rs.
 *
 *   dsm NAME STEP...   shm_open(NAME), then for each STEP:
 *                        t:BYTES  ftruncate to BYTES: prints "ftruncate BYTES rc=R errno=E"
 *                        f:BYTES  posix_fallocate(0, BYTES): prints "fallocate BYTES rc=R"
 *                        w        waits for a line on stdin (the test looks at the segment)
 *                        u        shm_unlink(NAME): prints "unlink rc=R"
 *   map BYTES          one shared anonymous mapping of BYTES, like the postmaster's; "mapped";
 *                      waits for a line
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static void wait_line(void) {
    char line[64];
    if (!fgets(line, sizeof line, stdin)) exit(3);
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc >= 3 && strcmp(argv[1], "map") == 0) {
        size_t bytes = strtoull(argv[2], NULL, 10);
        void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) { perror("mmap"); return 2; }
        puts("mapped");
        wait_line();
        return 0;
    }
    if (argc < 3 || strcmp(argv[1], "dsm") != 0) {
        fprintf(stderr, "usage: see the comment at the top of dsm.c\n");
        return 2;
    }
    const char *name = argv[2];
    int fd = shm_open(name, O_RDWR | O_CREAT | O_EXCL, 0600);
    if (fd < 0) { perror("shm_open"); return 2; }
    for (int i = 3; i < argc; i++) {
        const char *step = argv[i];
        if (step[0] == 't') {
            long long bytes = atoll(step + 2);
            errno = 0;
            int rc = ftruncate(fd, bytes);
            printf("ftruncate %lld rc=%d errno=%d\n", bytes, rc, rc ? errno : 0);
        } else if (step[0] == 'f') {
            long long bytes = atoll(step + 2);
            errno = 0;
            int rc = posix_fallocate(fd, 0, bytes);
            printf("fallocate %lld rc=%d errno=%d\n", bytes, rc, errno);
        } else if (step[0] == 'w') {
            puts("waiting");
            wait_line();
        } else if (step[0] == 'u') {
            printf("unlink rc=%d\n", shm_unlink(name));
        }
    }
    close(fd);
    return 0;
}
