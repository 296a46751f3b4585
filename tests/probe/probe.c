/* In-container probe, built statically by the tests.
 *   probe              tries syscalls a container must not be able to make and prints
 *                      NAME=RESULT lines (0, or the errno name)
 *   probe tty          tty_nr (field 7 of /proc/self/stat) and what TIOCSTI and TIOCLINUX
 *                      do on the first of fds 0-2 that is a terminal
 *   probe scan OUT     until OUT.stop exists, opens /proc/PID/exe and /proc/PID/fd/N of
 *                      every other process; writes to OUT each open that passed the
 *                      access check (other than a container binary or the fds 0-2 every
 *                      command is given), then "done opens=N denied=N leaks=N" */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

static void report(const char *name, long ret) {
    printf("%s=%s\n", name, ret < 0 ? strerrorname_np(errno) : "0");
}

static int syscalls(void) {
    report("add_key", syscall(SYS_add_key, "user", "ctrun-probe", "v", 1, -2 /* process keyring */));
    report("keyctl", syscall(SYS_keyctl, 0 /* GET_KEYRING_ID */, -3, 0));
    report("unshare_uts", unshare(CLONE_NEWUTS));
    report("bpf", syscall(SYS_bpf, 0, NULL, 0));
    report("getpid", syscall(SYS_getpid));
    return 0;
}

static int tty(void) {
    char buf[1024];
    FILE *f = fopen("/proc/self/stat", "r");
    if (!f || !fgets(buf, sizeof buf, f))
        return 1;
    fclose(f);
    char *p = strrchr(buf, ')');  /* the command name may hold spaces */
    int tty_nr = 0;
    sscanf(p + 2, "%*c %*d %*d %*d %d", &tty_nr);
    printf("tty_nr=%d\n", tty_nr);
    int fd = 0;
    while (fd < 3 && !isatty(fd))
        fd++;
    if (fd == 3) {
        printf("tiocsti=NOTTY\n");
        return 0;
    }
    char c = '\n';
    report("tiocsti", syscall(SYS_ioctl, fd, (unsigned long)TIOCSTI, &c));
    /* the kernel reads the request as 32 bits: set bits above must not get it through */
    report("tiocsti_hibits", syscall(SYS_ioctl, fd, (1UL << 32) | TIOCSTI, &c));
    char sub = 12; /* TIOCL_GETSHIFTSTATE: harmless, and ENOTTY on anything but a VT */
    report("tioclinux", syscall(SYS_ioctl, fd, (unsigned long)TIOCLINUX, &sub));
    report("tcgets", syscall(SYS_ioctl, fd, (unsigned long)TCGETS, buf));
    return 0;
}

static int same_file(int fd, const struct stat *a, const struct stat *b) {
    struct stat st;
    if (fstat(fd, &st) < 0)
        return 0;
    return (st.st_dev == a->st_dev && st.st_ino == a->st_ino) ||
           (st.st_dev == b->st_dev && st.st_ino == b->st_ino);
}

static int scan(const char *out) {
    char stop[4096], path[512];
    snprintf(stop, sizeof stop, "%s.stop", out);
    FILE *log = fopen(out, "w");
    struct stat self, busybox;
    if (!log || stat("/proc/self/exe", &self) < 0 || stat("/bin/busybox", &busybox) < 0)
        return 1;
    setvbuf(log, NULL, _IOLBF, 0);
    long opens = 0, denied = 0, leaks = 0;
    pid_t me = getpid();
    while (access(stop, F_OK) != 0) {
        DIR *proc = opendir("/proc");
        struct dirent *d;
        while (proc && (d = readdir(proc))) {
            int pid = atoi(d->d_name);
            if (pid <= 0 || pid == me)
                continue;
            snprintf(path, sizeof path, "/proc/%d/exe", pid);
            int fd = open(path, O_RDONLY | O_CLOEXEC);
            opens++;
            if (fd >= 0) {
                if (!same_file(fd, &self, &busybox)) {
                    char head[4] = {0};
                    ssize_t n = read(fd, head, 4);
                    fprintf(log, "LEAK %s opened (read %zd bytes: %s)\n", path, n,
                            n == 4 && !memcmp(head, "\177ELF", 4) ? "ELF header" : "?");
                    leaks++;
                }
                close(fd);
            } else if (errno == EACCES || errno == ENOENT || errno == ESRCH) {
                denied++;
            } else {
                fprintf(log, "LEAK %s: %s\n", path, strerrorname_np(errno));
                leaks++;
            }
            for (int n = 3; n < 64; n++) {
                snprintf(path, sizeof path, "/proc/%d/fd/%d", pid, n);
                fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
                opens++;
                if (fd >= 0 || (errno != EACCES && errno != ENOENT && errno != ESRCH)) {
                    char target[512] = "?";
                    ssize_t k = readlink(path, target, sizeof target - 1);
                    if (k >= 0)
                        target[k] = 0;
                    fprintf(log, "LEAK %s -> %s: %s\n", path, target,
                            fd >= 0 ? "opened" : strerrorname_np(errno));
                    leaks++;
                    if (fd >= 0)
                        close(fd);
                } else {
                    denied++;
                }
            }
        }
        if (proc)
            closedir(proc);
    }
    fprintf(log, "done opens=%ld denied=%ld leaks=%ld\n", opens, denied, leaks);
    fclose(log);
    return 0;
}

int main(int argc, char **argv) {
    if (argc > 1 && !strcmp(argv[1], "tty"))
        return tty();
    if (argc > 2 && !strcmp(argv[1], "scan"))
        return scan(argv[2]);
    return syscalls();
}
