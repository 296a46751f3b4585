/* The lab's workload and probe helper: built static on the host, copied into every
 * instance, so a loop is the same machine code in host, container and VM mode.
 *
 * Timed loops run for about SECONDS (time-bounded, so a slow TCG guest costs the same
 * wall time as the host) and time themselves with CLOCK_MONOTONIC inside the instance;
 * the exec path (ctrun exec, the VM agent) is never part of a figure.  Every command
 * prints KEY=VALUE lines.  Probes only read, or make calls whose only effect is the
 * permission check (settimeofday(NULL, NULL), finit_module(-1, ...)). */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/klog.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void result(const char *what, long ops, double elapsed) {
    printf("ops=%ld\nseconds=%.6f\n%s=%.3f\n", ops, elapsed, what, elapsed * 1e9 / ops);
}

static const char *err(long ret) { return ret < 0 ? strerrorname_np(errno) : "0"; }

/* a fixed compute chunk (xorshift): no memory traffic, no syscalls */
static uint64_t chunk(uint64_t x) {
    for (int i = 0; i < 1000000; i++) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
    }
    return x;
}

static int cmd_cpu(double secs) {
    uint64_t x = 88172645463325252ULL;
    long n = 0;
    double t0 = now(), t;
    do { x = chunk(x); n++; } while ((t = now()) - t0 < secs);
    printf("check=%llu\n", (unsigned long long)(x & 0xff));
    result("ns_per_op", n, t - t0);  /* op = one chunk of 10^6 xorshift steps */
    return 0;
}

#define TIMED_LOOP(body) do { \
    long n = 0; double t0 = now(), t; \
    do { for (int _i = 0; _i < 100; _i++) { body; } n += 100; } while ((t = now()) - t0 < secs); \
    result("ns_per_op", n, t - t0); } while (0)

static int cmd_getpid(double secs) { TIMED_LOOP(syscall(SYS_getpid)); return 0; }

static int cmd_openclose(double secs, const char *path) {
    TIMED_LOOP({ int fd = open(path, O_RDONLY); if (fd < 0) { perror(path); return 1; } close(fd); });
    return 0;
}

static int cmd_forkexec(double secs, const char *self) {
    long n = 0;
    double t0 = now(), t;
    do {
        pid_t p = fork();
        if (p == 0) { execl(self, self, "noop", (char *)NULL); _exit(127); }
        int st;
        if (p < 0 || waitpid(p, &st, 0) < 0 || !WIFEXITED(st) || WEXITSTATUS(st)) {
            fprintf(stderr, "fork+exec failed\n");
            return 1;
        }
        n++;
    } while ((t = now()) - t0 < secs);
    result("ns_per_op", n, t - t0);
    return 0;
}

/* 4 KiB at random block offsets for SECS; writes end with fdatasync.  Ops per second. */
static double rand_io(int fd, char *buf, uint64_t blocks, double secs, int writing) {
    static uint64_t x = 2463534242ULL;
    long n = 0;
    double t0 = now(), t;
    do {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        off_t off = (off_t)(x % blocks) * 4096;
        if ((writing ? pwrite(fd, buf, 4096, off) : pread(fd, buf, 4096, off)) != 4096) {
            perror(writing ? "pwrite" : "pread");
            return -1;
        }
        n++;
    } while ((t = now()) - t0 < secs);
    if (writing) { fdatasync(fd); t = now(); }
    return n / (t - t0);
}

/* sequential write (fsync'd), then read back, then random 4 KiB reads and writes */
static int cmd_fileio(const char *path, long mb, double secs) {
    static char buf[1 << 20];
    memset(buf, 0xa5, sizeof buf);
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (fd < 0) { perror(path); return 1; }
    double t0 = now();
    for (long i = 0; i < mb; i++)
        if (write(fd, buf, sizeof buf) != sizeof buf) { perror("write"); return 1; }
    fsync(fd);
    double tw = now() - t0;
    lseek(fd, 0, SEEK_SET);
    t0 = now();
    for (long i = 0; i < mb; i++)
        if (read(fd, buf, sizeof buf) != sizeof buf) { perror("read"); return 1; }
    double tr = now() - t0;
    printf("seq_write_mb_s=%.3f\nseq_read_mb_s=%.3f\n", mb / tw, mb / tr);
    uint64_t blocks = (uint64_t)mb * 256;
    double r = rand_io(fd, buf, blocks, secs / 2, 0), w = rand_io(fd, buf, blocks, secs / 2, 1);
    if (r < 0 || w < 0) return 1;
    printf("rand_read_iops=%.3f\nrand_write_iops=%.3f\n", r, w);
    close(fd);
    unlink(path);
    return 0;
}

static int connect_to(const char *ip, int port) {
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    if (inet_pton(AF_INET, ip, &a.sin_addr) != 1) { fprintf(stderr, "bad ip %s\n", ip); return -1; }
    int s = socket(AF_INET, SOCK_STREAM, 0);
    for (int i = 0; i < 50; i++) {
        if (connect(s, (struct sockaddr *)&a, sizeof a) == 0) {
            int one = 1;
            setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            return s;
        }
        usleep(100000);
    }
    perror("connect");
    return -1;
}

/* the client reads a stream from the host's server for SECONDS */
static int cmd_stream(const char *ip, int port, double secs) {
    static char buf[1 << 17];
    int s = connect_to(ip, port);
    if (s < 0 || write(s, "S", 1) != 1) return 1;
    long long bytes = 0;
    double t0 = now(), t;
    do {
        ssize_t r = read(s, buf, sizeof buf);
        if (r <= 0) { perror("read"); return 1; }
        bytes += r;
    } while ((t = now()) - t0 < secs);
    close(s);
    printf("bytes=%lld\nseconds=%.6f\nmbit_s=%.3f\n", bytes, t - t0, bytes * 8 / 1e6 / (t - t0));
    return 0;
}

/* one-byte request/response round trips with the host's server */
static int cmd_rr(const char *ip, int port, double secs) {
    int s = connect_to(ip, port);
    char c = 'R';
    if (s < 0 || write(s, &c, 1) != 1) return 1;
    TIMED_LOOP({ if (write(s, &c, 1) != 1 || read(s, &c, 1) != 1) { perror("rr"); return 1; } });
    close(s);
    return 0;
}

/* the host side: 'S' streams until the client hangs up, 'R' echoes bytes */
static int cmd_serve(const char *ip, int port) {
    static char buf[1 << 17];
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, ip, &a.sin_addr);
    int l = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(l, (struct sockaddr *)&a, sizeof a) || listen(l, 16)) { perror("bind"); return 1; }
    signal(SIGCHLD, SIG_IGN);
    printf("listening\n");
    fflush(stdout);
    for (;;) {
        int c = accept(l, NULL, NULL);
        if (c < 0) continue;
        if (fork() == 0) {
            char m;
            setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            if (read(c, &m, 1) != 1) _exit(0);
            if (m == 'S') { while (write(c, buf, sizeof buf) > 0) ; }
            else { while (read(c, &m, 1) == 1 && write(c, &m, 1) == 1) ; }
            _exit(0);
        }
        close(c);
    }
}

/* ---- probes: print what the kernel answered, the lab classifies ---- */
static int cmd_probe(void) {
    char buf[256];
    /* CAP_SYS_TIME check only: no time is given, nothing changes */
    printf("settime=%s\n", err(syscall(SYS_settimeofday, NULL, NULL)));
    /* the permission checks of module loading run before the fd is looked at: EBADF
     * means "allowed", EPERM "refused"; nothing is loaded */
    printf("finit_module=%s\n", err(syscall(SYS_finit_module, -1, "", 0)));
    long n = klogctl(10 /* SYSLOG_ACTION_SIZE_BUFFER */, NULL, 0);
    printf("klog_size=%s\n", err(n));
    n = klogctl(3 /* READ_ALL */, buf, sizeof buf);
    printf("klog_read=%s\nklog_bytes=%ld\n", err(n), n < 0 ? 0 : n);
    return 0;
}

/* open the first whole disk of /proc/partitions read-only and read one sector; a missing
 * node is made in a scratch directory (mknod), which the devices cgroup may still refuse */
static int cmd_rawdisk(const char *scratch) {
    FILE *f = fopen("/proc/partitions", "r");
    char line[256], name[64];
    unsigned maj, min;
    unsigned long long blocks;
    int found = 0;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, " %u %u %llu %63s", &maj, &min, &blocks, name) == 4 &&
            strncmp(name, "loop", 4) && strncmp(name, "ram", 3) && maj != 11) { found = 1; break; }
    if (f) fclose(f);
    if (!found) { printf("disk=none\n"); return 0; }
    char path[300];
    snprintf(path, sizeof path, "/dev/%s", name);
    int made = 0;
    struct stat st;
    if (stat(path, &st) != 0) {
        snprintf(path, sizeof path, "%s/ctrun-lab-disk", scratch);
        unlink(path);
        if (mknod(path, S_IFBLK | 0600, makedev(maj, min)) != 0) {
            printf("disk=%s\ndev=%u:%u\nmknod=%s\n", name, maj, min, err(-1));
            return 0;
        }
        made = 1;
    }
    int fd = open(path, O_RDONLY);
    printf("disk=%s\ndev=%u:%u\nopen=%s\n", name, maj, min, err(fd));
    if (fd >= 0) {
        char sec[512];
        printf("read=%zd\n", read(fd, sec, sizeof sec));
        close(fd);
    }
    if (made) unlink(path);
    return 0;
}

/* bounded fork bomb: children sleep until told; stops at the first refused fork or CAP */
static int cmd_forkbomb(long cap) {
    int pipefd[2];
    if (pipe(pipefd)) return 1;
    long n = 0;
    const char *why = "cap";
    for (; n < cap; n++) {
        pid_t p = fork();
        if (p == 0) { char c; close(pipefd[1]); read(pipefd[0], &c, 1); _exit(0); }
        if (p < 0) { why = strerrorname_np(errno); break; }
    }
    printf("forked=%ld\nstopped_by=%s\n", n, why);
    fflush(stdout);
    close(pipefd[1]);  /* every child's read returns: they exit */
    while (wait(NULL) > 0) ;
    return 0;
}

/* memory hog: touch MB mebibytes, reporting progress; the OOM killer may end it */
static int cmd_hog(long mb) {
    long i;
    for (i = 0; i < mb; i++) {
        char *p = mmap(NULL, 1 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) { printf("touched_mb=%ld\nstopped_by=%s\n", i, strerrorname_np(errno)); return 0; }
        memset(p, 1, 1 << 20);
        if (i % 8 == 0) { dprintf(1, "progress=%ld\n", i); }
    }
    printf("touched_mb=%ld\nstopped_by=cap\n", i);
    return 0;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    const char *c = argc > 1 ? argv[1] : "";
    double secs = argc > 2 ? atof(argv[2]) : 1.0;
    if (!strcmp(c, "noop")) return 0;
    if (!strcmp(c, "cpu")) return cmd_cpu(secs);
    if (!strcmp(c, "getpid")) return cmd_getpid(secs);
    if (!strcmp(c, "openclose") && argc > 3) return cmd_openclose(secs, argv[3]);
    if (!strcmp(c, "forkexec") && argc > 3) return cmd_forkexec(secs, argv[3]);
    if (!strcmp(c, "fileio") && argc > 4) return cmd_fileio(argv[3], atol(argv[4]), secs);
    if (!strcmp(c, "stream") && argc > 4) return cmd_stream(argv[3], atoi(argv[4]), secs);
    if (!strcmp(c, "rr") && argc > 4) return cmd_rr(argv[3], atoi(argv[4]), secs);
    if (!strcmp(c, "serve") && argc > 3) return cmd_serve(argv[2], atoi(argv[3]));
    if (!strcmp(c, "probe")) return cmd_probe();
    if (!strcmp(c, "rawdisk") && argc > 2) return cmd_rawdisk(argv[2]);
    if (!strcmp(c, "forkbomb") && argc > 2) return cmd_forkbomb(atol(argv[2]));
    if (!strcmp(c, "hog") && argc > 2) return cmd_hog(atol(argv[2]));
    fprintf(stderr, "usage: helper noop|cpu S|getpid S|openclose S PATH|forkexec S SELF|"
                    "fileio S PATH MB|stream S IP PORT|rr S IP PORT|serve IP PORT|probe|"
                    "rawdisk DIR|forkbomb CAP|hog MB\n");
    return 2;
}
