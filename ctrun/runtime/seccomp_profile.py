"""The default seccomp profile for containers: pure data, compiled by ctrun.runtime.seccomp.

Deny by default.  ALLOW lists what a normal distribution userland (systemd or
busybox init, shells, daemons, package managers, debuggers) uses.  A call is left
out when it reaches kernel code that is not namespaced (so a container could
affect the host or its neighbours) or that has a long record of exploitable bugs.

Names the kernel or libseccomp does not know on the target architecture are
skipped at compile time, so 32-bit-only and arch-specific names may be listed.
Any edit here changes the cache key, so cached programs are rebuilt.
"""

# What every call not allowed below gets back.
DEFAULT_ACTION = "errno:EPERM"

ALLOW = (
    # --- processes and threads (clone, clone3, unshare: see ARG_RULES) ---
    "fork", "vfork", "execve", "execveat", "exit", "exit_group",
    "wait4", "waitid", "waitpid",
    "getpid", "getppid", "gettid", "getpgid", "setpgid", "getpgrp", "getsid", "setsid",
    "set_tid_address", "set_robust_list", "get_robust_list", "rseq", "restart_syscall",
    "kill", "tkill", "tgkill", "pidfd_open", "pidfd_send_signal", "process_mrelease",
    "prctl", "arch_prctl", "set_thread_area", "get_thread_area",
    "seccomp",          # a nested filter can only narrow this one (systemd uses it)
    "ptrace",           # since 4.8 the kernel re-checks seccomp after a tracer edits a call
    "capget", "capset", "getrusage", "times",
    "landlock_create_ruleset", "landlock_add_rule", "landlock_restrict_self",
    "lsm_get_self_attr", "lsm_set_self_attr", "lsm_list_modules",
    # --- scheduling: the kernel checks CAP_SYS_NICE itself for raising priority ---
    "sched_yield", "sched_getaffinity", "sched_setaffinity", "sched_getparam",
    "sched_setparam", "sched_getscheduler", "sched_setscheduler",
    "sched_get_priority_max", "sched_get_priority_min",
    "sched_rr_get_interval", "sched_rr_get_interval_time64",
    "sched_getattr", "sched_setattr", "getpriority", "setpriority",
    "ioprio_get", "ioprio_set", "getcpu",
    # --- synchronisation ---
    "futex", "futex_time64", "futex_waitv", "futex_wake", "futex_wait", "futex_requeue",
    "membarrier",
    # --- credentials (the kernel enforces CAP_SETUID/CAP_SETGID) ---
    "getuid", "geteuid", "getgid", "getegid", "getresuid", "getresgid",
    "setuid", "setgid", "setreuid", "setregid", "setresuid", "setresgid",
    "setfsuid", "setfsgid", "getgroups", "setgroups",
    "getuid32", "geteuid32", "getgid32", "getegid32", "getresuid32", "getresgid32",
    "setuid32", "setgid32", "setreuid32", "setregid32", "setresuid32", "setresgid32",
    "setfsuid32", "setfsgid32", "getgroups32", "setgroups32",
    # --- signals ---
    "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "rt_sigsuspend", "rt_sigpending",
    "rt_sigtimedwait", "rt_sigtimedwait_time64", "rt_sigqueueinfo", "rt_tgsigqueueinfo",
    "sigaltstack", "signalfd", "signalfd4", "pause", "alarm",
    "sigaction", "sigprocmask", "sigreturn", "sigsuspend", "sigpending",
    # --- memory (NUMA placement is in CAP_GATED) ---
    "brk", "mmap", "mmap2", "munmap", "mremap", "mprotect", "madvise", "mincore", "msync",
    "mlock", "mlock2", "munlock", "mlockall", "munlockall", "remap_file_pages",
    "memfd_create", "memfd_secret", "pkey_alloc", "pkey_free", "pkey_mprotect",
    "get_mempolicy", "map_shadow_stack", "mseal", "cachestat",
    # --- file descriptors and I/O ---
    "read", "write", "readv", "writev", "pread64", "pwrite64", "preadv", "pwritev",
    "preadv2", "pwritev2", "lseek", "_llseek", "close", "close_range",
    "dup", "dup2", "dup3", "fcntl", "fcntl64", "flock",  # ioctl: see ARG_RULES
    "fsync", "fdatasync", "sync", "syncfs", "sync_file_range", "sync_file_range2",
    "arm_sync_file_range", "fallocate", "ftruncate", "ftruncate64", "truncate", "truncate64",
    "sendfile", "sendfile64", "splice", "tee", "vmsplice", "copy_file_range", "readahead",
    "fadvise64", "fadvise64_64", "arm_fadvise64_64",
    "pipe", "pipe2", "eventfd", "eventfd2",
    # POSIX AIO via the kernel (databases use it); io_uring is deliberately absent
    "io_setup", "io_destroy", "io_submit", "io_cancel", "io_getevents",
    "io_pgetevents", "io_pgetevents_time64",
    # --- paths and metadata (mknod is still limited by CAP_MKNOD and the device cgroup) ---
    "open", "openat", "openat2", "creat", "access", "faccessat", "faccessat2",
    "stat", "fstat", "lstat", "stat64", "fstat64", "lstat64", "newfstatat", "fstatat64",
    "statx", "statfs", "fstatfs", "statfs64", "fstatfs64",
    "readlink", "readlinkat", "getdents", "getdents64", "getcwd", "chdir", "fchdir", "chroot",
    "mkdir", "mkdirat", "rmdir", "mknod", "mknodat", "link", "linkat", "symlink", "symlinkat",
    "unlink", "unlinkat", "rename", "renameat", "renameat2",
    "chmod", "fchmod", "fchmodat", "fchmodat2",
    "chown", "fchown", "lchown", "fchownat", "chown32", "fchown32", "lchown32",
    "utime", "utimes", "futimesat", "utimensat", "utimensat_time64", "umask",
    "setxattr", "lsetxattr", "fsetxattr", "getxattr", "lgetxattr", "fgetxattr",
    "listxattr", "llistxattr", "flistxattr", "removexattr", "lremovexattr", "fremovexattr",
    "setxattrat", "getxattrat", "listxattrat", "removexattrat",
    "file_getattr", "file_setattr",
    "name_to_handle_at",  # only makes a handle; opening one (open_by_handle_at) stays denied
    "inotify_init", "inotify_init1", "inotify_add_watch", "inotify_rm_watch",
    "fanotify_mark",      # useless without fanotify_init, which is gated
    # --- waiting for events ---
    "select", "_newselect", "pselect6", "pselect6_time64", "poll", "ppoll", "ppoll_time64",
    "epoll_create", "epoll_create1", "epoll_ctl", "epoll_wait", "epoll_pwait", "epoll_pwait2",
    # --- time (setting the clock is gated: the clock is not namespaced) ---
    "time", "gettimeofday", "clock_gettime", "clock_gettime64", "clock_getres",
    "clock_getres_time64", "clock_nanosleep", "clock_nanosleep_time64", "nanosleep",
    "getitimer", "setitimer", "timer_create", "timer_settime", "timer_settime64",
    "timer_gettime", "timer_gettime64", "timer_getoverrun", "timer_delete",
    "timerfd_create", "timerfd_settime", "timerfd_settime64", "timerfd_gettime",
    "timerfd_gettime64",
    # read-only without CAP_SYS_TIME (the kernel checks it for any change); ntp_gettime uses it
    "adjtimex", "clock_adjtime", "clock_adjtime64",
    # --- System V and POSIX IPC (namespaced by the IPC namespace) ---
    "msgget", "msgsnd", "msgrcv", "msgctl", "semget", "semop", "semtimedop",
    "semtimedop_time64", "semctl", "shmget", "shmat", "shmdt", "shmctl", "ipc",
    "mq_open", "mq_unlink", "mq_timedsend", "mq_timedsend_time64", "mq_timedreceive",
    "mq_timedreceive_time64", "mq_notify", "mq_getsetattr",
    # --- networking (socket itself: see ARG_RULES) ---
    "socketpair", "bind", "listen", "accept", "accept4", "connect",
    "getsockname", "getpeername", "sendto", "recvfrom", "send", "recv",
    "sendmsg", "recvmsg", "sendmmsg", "recvmmsg", "recvmmsg_time64",
    "shutdown", "setsockopt", "getsockopt",
    # --- system information; host and domain name belong to the UTS namespace ---
    "uname", "sysinfo", "getrlimit", "setrlimit", "ugetrlimit", "prlimit64",
    "sethostname", "setdomainname", "getrandom",
    "vhangup",  # hangs up only the caller's own terminal (getty calls it)
)

# Allowed only while the capability is in the container's bounding set: these
# reach state the kernel does not namespace, so the capability is the real gate.
CAP_GATED = {
    "CAP_SYS_ADMIN": (
        # mounts and namespaces (clone/unshare without namespace flags are in ARG_RULES)
        "mount", "umount", "umount2", "pivot_root", "setns", "unshare", "clone", "clone3",
        "fsopen", "fsconfig", "fsmount", "fspick", "move_mount", "open_tree",
        "open_tree_attr", "mount_setattr", "statmount", "listmount", "listns",
        # host-wide storage and accounting knobs
        "quotactl", "quotactl_fd", "swapon", "swapoff", "lookup_dcookie",
        "fanotify_init",
        # large kernel attack surface, also reachable through CAP_BPF/CAP_PERFMON
        "bpf", "perf_event_open",
    ),
    "CAP_BPF": ("bpf",),
    "CAP_PERFMON": ("perf_event_open",),
    "CAP_SYS_PTRACE": (
        # reach into another process's memory or files without stopping it
        "process_vm_readv", "process_vm_writev", "process_madvise", "kcmp", "pidfd_getfd",
    ),
    "CAP_SYS_TIME": ("settimeofday", "stime", "clock_settime", "clock_settime64"),
    "CAP_SYS_MODULE": ("init_module", "finit_module", "delete_module"),
    "CAP_SYS_BOOT": ("reboot",),  # inside a PID namespace this stops only the container
    "CAP_SYS_RAWIO": ("iopl", "ioperm"),
    "CAP_SYS_NICE": (
        # NUMA placement can starve other tenants of local memory
        "mbind", "set_mempolicy", "set_mempolicy_home_node", "migrate_pages", "move_pages",
    ),
    "CAP_SYSLOG": ("syslog",),  # the kernel log is host-wide
    "CAP_SYS_PACCT": ("acct",),
}

# Calls allowed only for some argument values, when not already allowed outright
# (by ALLOW or a CAP_GATED entry).  Each entry is one alternative:
# (arg index, "eq"|"lt", value) or (arg index, "masked_eq", mask, value).
# Every comparison covers all 64 bits, so a value with junk in the high half,
# which the kernel would truncate to an int, never matches by accident.
_NS_FLAGS = (0x00020000 | 0x04000000 | 0x08000000 | 0x10000000    # NEWNS UTS IPC USER
             | 0x20000000 | 0x40000000 | 0x02000000)               # NEWPID NET CGROUP
_CLONE_NEWTIME = 0x00000080  # unshare only: in clone's flags these bits hold the exit signal
_M64 = 0xFFFFFFFFFFFFFFFF

_TIOCSTI, _TIOCLINUX = 0x5412, 0x541C

ARG_RULES = {
    # every request but TIOCSTI (types into a terminal: the operator's, if the container
    # can reach it) and TIOCLINUX (the same through a virtual console's selection).
    # The kernel reads the request as 32 bits: the upper half is ignored here too.
    "ioctl": ((1, "not_in32", _TIOCSTI, _TIOCLINUX),),
    # threads and fork; arg 0 is the flags word on x86_64, aarch64 and arm (not s390)
    "clone": ((0, "masked_eq", _NS_FLAGS, 0),),
    # unshare(CLONE_FS/CLONE_FILES...) is harmless; new namespaces need CAP_SYS_ADMIN
    "unshare": ((0, "masked_eq", _NS_FLAGS | _CLONE_NEWTIME, 0),),
    # PER_LINUX, PER_LINUX32, UNAME26, PER_LINUX32|UNAME26, and the query value
    "personality": tuple((0, "eq", v) for v in (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)),
    # every address family except AF_VSOCK (40), which reaches the host's hypervisor
    # sockets.  Written as ranges: 0-39, 41, 42-43, 44-47, 48-63 (AF_MAX is 46 today).
    "socket": (
        (0, "lt", 40),
        (0, "eq", 41),
        (0, "masked_eq", _M64 ^ 0x1, 42),
        (0, "masked_eq", _M64 ^ 0x3, 44),
        (0, "masked_eq", _M64 ^ 0xF, 48),
    ),
}

# Calls answered with an errno other than the default, when not allowed outright.
# clone3 passes its flags in memory seccomp cannot read; ENOSYS makes glibc fall
# back to clone, whose flags ARG_RULES can check.
ERRNO_RULES = {"clone3": "ENOSYS"}

# Never allowed, whatever the capabilities (listed so a reader knows it is deliberate):
# kexec_load, kexec_file_load, add_key, request_key, keyctl (keyrings are not
# namespaced), userfaultfd, open_by_handle_at (escapes a bind-mounted root),
# io_uring_setup/enter/register (bypasses this filter for its own operations),
# modify_ldt, vm86, vm86old, uselib, _sysctl, nfsservctl, get_kernel_syms,
# create_module, query_module, ustat, sysfs.

# Numbers for calls newer than some libseccomp releases know.  From 424 onwards
# every architecture but alpha and mips shares one numbering, so these hold on the
# ones ctrun supports.  Used only when libseccomp cannot resolve the name.
UNIFIED_NR = {
    "pidfd_send_signal": 424, "pidfd_open": 434, "clone3": 435, "close_range": 436,
    "openat2": 437, "pidfd_getfd": 438, "faccessat2": 439, "process_madvise": 440,
    "epoll_pwait2": 441, "mount_setattr": 442, "quotactl_fd": 443,
    "landlock_create_ruleset": 444, "landlock_add_rule": 445, "landlock_restrict_self": 446,
    "memfd_secret": 447, "process_mrelease": 448, "futex_waitv": 449,
    "set_mempolicy_home_node": 450, "cachestat": 451, "fchmodat2": 452,
    "map_shadow_stack": 453, "futex_wake": 454, "futex_wait": 455, "futex_requeue": 456,
    "statmount": 457, "listmount": 458, "lsm_get_self_attr": 459, "lsm_set_self_attr": 460,
    "lsm_list_modules": 461, "mseal": 462, "setxattrat": 463, "getxattrat": 464,
    "listxattrat": 465, "removexattrat": 466, "open_tree_attr": 467,
    "file_getattr": 468, "file_setattr": 469, "listns": 470,
}
