/* In-container probe, built statically by the tests.
 *   probe              tries syscalls a container must not be able to make and prints
 *                      NAME=RESULT lines (0, or the errno name)
 *   probe sysinfo      what sysinfo(2) answers: totalram (bytes), uptime and procs, then
 *                      sysinfo_null, sysinfo_readonly, sysinfo_straddle=RESULT for a NULL
 *                      buffer, a read-only one and one running off its mapping's end
 *   probe tty          tty_nr (field 7 of /proc/self/stat) and what TIOCSTI and TIOCLINUX
 *                      do on the first of fds 0-2 that is a terminal
 *   probe scan OUT     until OUT.stop exists, opens /proc/PID/exe and /proc/PID/fd/N of
 *                      every other process; writes to OUT each open that passed the
 *                      access check (other than a container binary or the fds 0-2 every
 *                      command is given), then "done opens=N denied=N leaks=N"
 * Forged frames for the bridge's anti-spoofing tests (containers keep CAP_NET_RAW):
 *   probe arp IFACE SENDER_IP [SENDER_MAC]        a gratuitous ARP request, broadcast
 *                                   (SENDER_MAC: in the ARP body only)
 *   probe udp IFACE SRC_MAC SRC_IP DST_MAC DST_IP PORT TEXT   one raw IPv4 UDP datagram
 *   probe listen PORT SECONDS                     prints each UDP payload received */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <netinet/in.h>
#include <netpacket/packet.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysinfo.h>
#include <sys/time.h>
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

static int sysinfo_probe(void) {
    struct sysinfo si;
    if (syscall(SYS_sysinfo, &si) < 0) {
        printf("sysinfo=%s\n", strerrorname_np(errno));
        return 1;
    }
    printf("totalram=%llu uptime=%ld procs=%u\n",
           (unsigned long long)si.totalram * si.mem_unit, si.uptime, si.procs);
    report("sysinfo_null", syscall(SYS_sysinfo, NULL));
    void *ro = mmap(NULL, 4096, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    report("sysinfo_readonly", syscall(SYS_sysinfo, ro));
    char *two = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    munmap(two + 4096, 4096);
    report("sysinfo_straddle", syscall(SYS_sysinfo, two + 4096 - 16));
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

static void die(const char *what) {
    perror(what);
    exit(2);
}

static void mac(const char *text, unsigned char *out) {
    if (sscanf(text, "%hhx:%hhx:%hhx:%hhx:%hhx:%hhx",
               &out[0], &out[1], &out[2], &out[3], &out[4], &out[5]) != 6)
        die("bad mac");
}

static void ip4(const char *text, unsigned char *out) {
    if (inet_pton(AF_INET, text, out) != 1)
        die("bad ipv4 address");
}

static int packet_socket(void) {
    int s = socket(AF_PACKET, SOCK_RAW, 0);
    if (s < 0)
        die("socket");
    return s;
}

static void own_mac(const char *iface, unsigned char *out) {
    int s = packet_socket();
    struct ifreq ifr = {0};
    strncpy(ifr.ifr_name, iface, IFNAMSIZ - 1);
    if (ioctl(s, SIOCGIFHWADDR, &ifr) < 0)
        die("SIOCGIFHWADDR");
    memcpy(out, ifr.ifr_hwaddr.sa_data, 6);
    close(s);
}

static void send_frame(const char *iface, const unsigned char *frame, size_t len) {
    int s = packet_socket();
    struct sockaddr_ll to = {.sll_family = AF_PACKET, .sll_ifindex = (int)if_nametoindex(iface),
                             .sll_halen = 6};
    memcpy(to.sll_addr, frame, 6);
    if (sendto(s, frame, len, 0, (struct sockaddr *)&to, sizeof to) != (ssize_t)len)
        die("sendto");
    close(s);
}

static uint16_t checksum(const void *data, size_t len) {
    const uint8_t *p = data;
    uint32_t sum = 0;
    for (size_t i = 0; i + 1 < len; i += 2)
        sum += (uint32_t)(p[i] << 8 | p[i + 1]);
    if (len & 1)
        sum += (uint32_t)(p[len - 1] << 8);
    while (sum >> 16)
        sum = (sum & 0xffff) + (sum >> 16);
    return htons((uint16_t)~sum);
}

static int garp(int argc, char **argv) {
    if (argc < 4)
        die("usage: probe arp IFACE SENDER_IP [SENDER_MAC]");
    unsigned char f[42] = {0}, own[6];
    own_mac(argv[2], own);
    memset(f, 0xff, 6);                        /* to everyone */
    memcpy(f + 6, own, 6);
    f[12] = 0x08, f[13] = 0x06;                /* ARP */
    f[14] = 0, f[15] = 1, f[16] = 8, f[17] = 0, f[18] = 6, f[19] = 4;
    f[20] = 0, f[21] = 1;                      /* request */
    if (argc > 4)                              /* a sender MAC other than the frame's */
        mac(argv[4], own);
    memcpy(f + 22, own, 6);
    ip4(argv[3], f + 28);                      /* sender ip == target ip: gratuitous */
    ip4(argv[3], f + 38);
    send_frame(argv[2], f, sizeof f);
    return 0;
}

static int udp(int argc, char **argv) {
    if (argc != 9)
        die("usage: probe udp IFACE SRC_MAC SRC_IP DST_MAC DST_IP PORT TEXT");
    size_t n = strlen(argv[8]), len = 14 + 20 + 8 + n;
    unsigned char *f = calloc(1, len), *ip = f + 14, *u = ip + 20;
    mac(argv[5], f);
    mac(argv[3], f + 6);
    f[12] = 0x08, f[13] = 0x00;
    ip[0] = 0x45, ip[8] = 64, ip[9] = 17;
    *(uint16_t *)(ip + 2) = htons((uint16_t)(20 + 8 + n));
    ip4(argv[4], ip + 12);
    ip4(argv[6], ip + 16);
    *(uint16_t *)(ip + 10) = checksum(ip, 20);
    *(uint16_t *)(u + 0) = htons(40000);
    *(uint16_t *)(u + 2) = htons((uint16_t)atoi(argv[7]));
    *(uint16_t *)(u + 4) = htons((uint16_t)(8 + n));   /* checksum 0: none */
    memcpy(u + 8, argv[8], n);
    send_frame(argv[2], f, len);
    return 0;
}

static int listen_udp(int argc, char **argv) {
    if (argc != 4)
        die("usage: probe listen PORT SECONDS");
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[2]))};
    if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof a) < 0)
        die("bind");
    struct timeval tv = {.tv_sec = atoi(argv[3])};
    setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    printf("ready\n");
    fflush(stdout);
    char buf[512];
    ssize_t got;
    while ((got = recv(s, buf, sizeof buf - 1, 0)) >= 0) {
        buf[got] = 0;
        printf("got %s\n", buf);
        fflush(stdout);
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc > 1 && !strcmp(argv[1], "tty"))
        return tty();
    if (argc > 1 && !strcmp(argv[1], "sysinfo"))
        return sysinfo_probe();
    if (argc > 2 && !strcmp(argv[1], "scan"))
        return scan(argv[2]);
    if (argc > 1 && !strcmp(argv[1], "arp"))
        return garp(argc, argv);
    if (argc > 1 && !strcmp(argv[1], "udp"))
        return udp(argc, argv);
    if (argc > 1 && !strcmp(argv[1], "listen"))
        return listen_udp(argc, argv);
    return syscalls();
}
