/*
 * memhog: make the guest swap, and check that every word comes back intact.
 *
 *   memhog MB PASSES PATTERN [HOLDFILE]
 *
 * Fills MB of anonymous memory page by page.  With HOLDFILE it then creates
 * that file, keeps all its memory and waits for SIGUSR1 (the test reads the
 * swap device's counters meanwhile).  Then it verifies every page PASSES
 * times: backwards first (the pages read first are the ones swapped out
 * longest ago), then in a scattered order (defeats swap readahead), then
 * forwards, and so on.
 *
 * PATTERN: "mixed": per page, the first half is pseudo-random and the rest one
 * repeated word (compresses about 2:1), and every 16th page is one word
 * repeated (zram's same-filled pages); "random": incompressible.
 * Every page's content depends on its index and a per-run seed, so pages that
 * come back misplaced, stale or zeroed are caught.
 *
 * While filling and verifying it prints "memhog: progress ..." about every 2
 * seconds, so the host can tell a slow guest from a hung one.
 *
 * Prints "MEMHOG: PASS ..." or "MEMHOG: FAIL ..."; exit status 0, 1, or 2
 * (usage).  Build: gcc -O2 -static -o memhog memhog.c
 */
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define WORDS 512 /* 64-bit words per 4 KiB page */

static uint64_t seed;
static int random_only;

static uint64_t splitmix(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

static uint64_t expected(size_t page, size_t i)
{
    uint64_t fill = splitmix(seed ^ ~(uint64_t)page);
    if (!random_only && page % 16 == 5)
        return fill;                                  /* same-filled page */
    if (i == 0)
        return seed ^ page;                           /* page tag */
    if (random_only || i < WORDS / 2)
        return splitmix(seed ^ ((uint64_t)page << 12) ^ i);
    return fill;
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* a progress line at most every 2 s (checked once per MiB) */
static void progress(const char *what, size_t page, size_t npages)
{
    static double last;
    double t = now();
    if (t - last < 2.0)
        return;
    last = t;
    printf("memhog: progress %s %zu/%zu MB\n", what, page >> 8, npages >> 8);
    fflush(stdout);
}

static size_t gcd(size_t a, size_t b)
{
    while (b) {
        size_t t = a % b;
        a = b;
        b = t;
    }
    return a;
}

/* verify one pass; order 0: forwards, 1: backwards, 2: scattered */
static size_t verify(uint64_t *mem, size_t npages, int order)
{
    size_t bad = 0, step = 7919; /* coprime to npages: k * step mod npages is a permutation */
    while (gcd(step, npages) != 1)
        step += 2;
    for (size_t k = 0; k < npages; k++) {
        size_t p = order == 0 ? k : order == 1 ? npages - 1 - k : (k * step) % npages;
        const uint64_t *pg = mem + p * WORDS;
        if (k % 256 == 0)
            progress("verify", k, npages);
        for (size_t i = 0; i < WORDS; i++) {
            if (pg[i] != expected(p, i)) {
                if (bad < 8)
                    printf("memhog: MISMATCH page %zu word %zu: %016llx, expected %016llx\n", p, i,
                           (unsigned long long)pg[i], (unsigned long long)expected(p, i));
                bad++;
                break;
            }
        }
    }
    return bad;
}

int main(int argc, char **argv)
{
    if (argc < 4 || sysconf(_SC_PAGESIZE) != WORDS * 8) {
        fprintf(stderr, "usage: memhog MB PASSES mixed|random [HOLDFILE] (4 KiB pages)\n");
        return 2;
    }
    size_t mb = strtoul(argv[1], NULL, 10), npages = mb << 8;
    int passes = atoi(argv[2]);
    random_only = !strcmp(argv[3], "random");
    const char *holdfile = argc > 4 ? argv[4] : NULL;
    seed = splitmix((uint64_t)time(NULL) << 20 ^ (uint64_t)getpid());

    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR1);
    sigprocmask(SIG_BLOCK, &set, NULL);

    uint64_t *mem = mmap(NULL, npages * WORDS * 8, PROT_READ | PROT_WRITE,
                         MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) {
        printf("MEMHOG: FAIL cannot map %zu MB\n", mb);
        return 1;
    }
    madvise(mem, npages * WORDS * 8, MADV_NOHUGEPAGE);

    double t0 = now();
    for (size_t p = 0; p < npages; p++) {
        for (size_t i = 0; i < WORDS; i++)
            mem[p * WORDS + i] = expected(p, i);
        if (p % 256 == 0)
            progress("fill", p, npages);
        if ((p + 1) % (npages / 4) == 0) {
            printf("memhog: filled %zu/%zu MB in %.1fs\n", (p + 1) >> 8, mb, now() - t0);
            fflush(stdout);
        }
    }
    if (holdfile) {
        int fd = open(holdfile, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd < 0) {
            printf("MEMHOG: FAIL cannot create %s\n", holdfile);
            return 1;
        }
        close(fd);
        printf("memhog: holding %zu MB until SIGUSR1\n", mb);
        fflush(stdout);
        int sig;
        sigwait(&set, &sig);
    }
    static const char *const names[] = {"forwards", "backwards", "scattered"};
    size_t bad = 0;
    for (int pass = 1; pass <= passes; pass++) {
        double t = now();
        int order = pass % 3;
        bad += verify(mem, npages, order);
        printf("memhog: verify pass %d/%d (%s) in %.1fs, bad pages %zu\n", pass, passes,
               names[order], now() - t, bad);
        fflush(stdout);
    }
    if (bad) {
        printf("MEMHOG: FAIL %zu bad pages of %zu\n", bad, npages);
        return 1;
    }
    printf("MEMHOG: PASS %zu MB verified in %.1fs\n", mb, now() - t0);
    return 0;
}
