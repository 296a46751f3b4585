/* In-container probe: tries syscalls a container must not be able to make and prints
 * NAME=RESULT lines (0, or the errno name).  Built statically by the tests. */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

static void report(const char *name, long ret) {
    printf("%s=%s\n", name, ret < 0 ? strerrorname_np(errno) : "0");
}

int main(void) {
    report("add_key", syscall(SYS_add_key, "user", "ctrun-probe", "v", 1, -2 /* process keyring */));
    report("keyctl", syscall(SYS_keyctl, 0 /* GET_KEYRING_ID */, -3, 0));
    report("unshare_uts", unshare(CLONE_NEWUTS));
    report("bpf", syscall(SYS_bpf, 0, NULL, 0));
    report("getpid", syscall(SYS_getpid));
    return 0;
}
