/* ctrun guest agent: runs inside a ctrun VM and serves the host over virtio-serial ports.
 *
 * Why virtio-serial and several ports: vsock needs /dev/vhost-vsock on the host, which not
 * every host has; a virtio-serial port is a plain byte stream to a unix socket that QEMU
 * serves on the host, one client at a time.  Giving each VM a few ports ("ctrun.agent.N")
 * lets several host clients (an exec, a stats call, a stop) talk at once with no
 * multiplexer process on the host: a client takes a free port, says hello with a nonce,
 * runs one session and hangs up; the guest sees the hang-up and ends that session.
 *
 * Where the host has vhost-vsock, QEMU gives the guest a vsock device instead: the agent
 * listens on vsock port 1024 and every accepted connection is a session of its own, with
 * the same frames.
 *
 * Who may talk to it: only the host that started the VM.  Each start makes a fresh 32-byte
 * key, puts it in the host's VM directory (root only, 0600) and in this start's initramfs as
 * /ctrun/key (never on the kernel command line or QEMU's argv, which every user can read);
 * the agent reads it before anything of the image runs, unlinks it and keeps it in memory.
 * A session starts with a challenge: the agent answers the host's hello with a fresh random
 * nonce, the host must return HMAC-SHA256(key, "ctrun-host" NUL agent-nonce host-nonce),
 * and only then is any other frame obeyed; the agent proves the key back the same way.  A
 * wrong proof ends the session (a vsock connection is closed).  On vsock only the host
 * (CID 2) may connect at all: a guest process over vsock loopback is refused at accept.
 *
 * Frames both ways: 1 byte type, 4 bytes little-endian payload length, payload.
 *   host -> guest  H nonce (reset the port's session, reply c agent-nonce(32) host-nonce)
 *                  A proof (32 bytes; reply h agent-proof(32) release, or n and the end)
 *                  O exec request: NUL-separated "flags" "cwd" "uid:gid[:g1,g2...]" ENV...
 *                    "" ARGV... (the optional list: supplementary groups, else none;
 *                    flags: t a tty, i stdin, k an init: when it exits the rest of its
 *                    process group is killed and its output ends there, as a container's
 *                    processes end with its pid 1)
 *                  I stdin bytes   E stdin closed   R "rows cols"   K signal number
 *                  S stats         D signal for PID 1 (orderly shutdown; with " poweroff"
                  after the number, systemd as PID 1 gets its power-off signal instead,
                  sysvinit a runlevel-0 request, and the reply is d "poweroff")
 *                  P power off now
 *                  Q ping (answered q at once, whatever the session is doing)
 *   guest -> host  c challenge  h hello reply  n refused  o stdout  e stderr  x exit code
 *                  s stats lines "key value"   d done   r agent started (say hello again)
 * Built static (gcc -static) on the host and put in the VM's initramfs; it is started before
 * switch_root and chroots into the real root, so it runs whatever init the image has.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/random.h>
#include <sys/reboot.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>
#include <linux/vm_sockets.h>

#define MAXPORTS 24
#define MAXFRAME 65536
#define VSOCK_PORT 1024
#define KEY_FILE "/ctrun/key"
#define KEYLEN 32
#define NONCE 32
#define MAXHNONCE 64

struct session {
    int fd;                 /* the virtio port, or an accepted vsock connection (-1: free) */
    int vsock;              /* a connection: closed and its slot freed when the host hangs up */
    int connected;
    unsigned char in[MAXFRAME + 6];
    size_t inlen;
    pid_t pid;              /* running command, 0 if none */
    int status, exited;
    int out, err, stdin_fd; /* -1 when closed; with a tty out == stdin_fd == pty master */
    int tty;
    int init;               /* the command is a workload whose end ends its process group */
    char *pend;             /* stdin bytes not yet written */
    size_t pendlen;
    int stdin_eof;
    int challenged, authed;  /* a nonce is out; the host proved the key for this session */
    unsigned char anonce[NONCE], hnonce[MAXHNONCE];
    size_t hnlen;
};

static struct session ports[MAXPORTS];
static int nports;
static unsigned char key[KEYLEN];

/* SHA-256 (FIPS 180-4) and HMAC (RFC 2104): a static guest binary has no crypto library,
 * and the guest kernel's AF_ALG would need modules of its own in the initramfs */
static const uint32_t K256[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
    0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
    0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
    0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
    0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
    0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
    0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
    0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
    0xc67178f2};

struct sha256 {
    uint32_t h[8];
    unsigned char blk[64];
    uint64_t bytes;
};

static uint32_t ror(uint32_t x, int n)
{
    return x >> n | x << (32 - n);
}

static void sha256_block(uint32_t *h, const unsigned char *p)
{
    uint32_t w[64], v[8], t1, t2;
    int i;
    for (i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 |
               (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
    for (; i < 64; i++)
        w[i] = w[i - 16] + (ror(w[i - 15], 7) ^ ror(w[i - 15], 18) ^ w[i - 15] >> 3) +
               w[i - 7] + (ror(w[i - 2], 17) ^ ror(w[i - 2], 19) ^ w[i - 2] >> 10);
    memcpy(v, h, sizeof v);
    for (i = 0; i < 64; i++) {  /* v: a b c d e f g h */
        t1 = v[7] + (ror(v[4], 6) ^ ror(v[4], 11) ^ ror(v[4], 25)) +
             ((v[4] & v[5]) ^ (~v[4] & v[6])) + K256[i] + w[i];
        t2 = (ror(v[0], 2) ^ ror(v[0], 13) ^ ror(v[0], 22)) +
             ((v[0] & v[1]) ^ (v[0] & v[2]) ^ (v[1] & v[2]));
        memmove(v + 1, v, 7 * sizeof v[0]);
        v[4] += t1;
        v[0] = t1 + t2;
    }
    for (i = 0; i < 8; i++)
        h[i] += v[i];
}

static void sha256_init(struct sha256 *s)
{
    static const uint32_t h0[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                   0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    memcpy(s->h, h0, sizeof h0);
    s->bytes = 0;
}

static void sha256_update(struct sha256 *s, const void *data, size_t len)
{
    const unsigned char *p = data;
    while (len--) {
        s->blk[s->bytes++ % 64] = *p++;
        if (s->bytes % 64 == 0)
            sha256_block(s->h, s->blk);
    }
}

static void sha256_final(struct sha256 *s, unsigned char out[32])
{
    unsigned char pad = 0x80, zero = 0, len[8];
    uint64_t bits = s->bytes * 8;
    int i;
    sha256_update(s, &pad, 1);
    while (s->bytes % 64 != 56)
        sha256_update(s, &zero, 1);
    for (i = 0; i < 8; i++)
        len[i] = bits >> (56 - 8 * i);
    sha256_update(s, len, 8);
    for (i = 0; i < 32; i++)
        out[i] = s->h[i / 4] >> (24 - 8 * (i % 4));
}

static void hmac_sha256(const unsigned char k[KEYLEN], const void *msg, size_t len,
                        unsigned char out[32])
{
    unsigned char pad[64], inner[32];
    struct sha256 s;
    int i, pass;
    for (pass = 0; pass < 2; pass++) {  /* inner: key ^ 0x36, message; outer: key ^ 0x5c */
        for (i = 0; i < 64; i++)
            pad[i] = (i < KEYLEN ? k[i] : 0) ^ (pass ? 0x5c : 0x36);
        sha256_init(&s);
        sha256_update(&s, pad, 64);
        if (pass)
            sha256_update(&s, inner, 32);
        else
            sha256_update(&s, msg, len);
        sha256_final(&s, pass ? out : inner);
    }
}

/* HMAC(key, label NUL a b): the proofs of the hello; a label per direction, so one
 * side's proof can never be replayed as the other's */
static void proof(const char *label, const unsigned char *a, size_t alen,
                  const unsigned char *b, size_t blen, unsigned char out[32])
{
    unsigned char msg[32 + NONCE + MAXHNONCE];
    size_t l = strlen(label) + 1;
    memcpy(msg, label, l);
    memcpy(msg + l, a, alen);
    memcpy(msg + l + alen, b, blen);
    hmac_sha256(key, msg, l + alen + blen, out);
}

static int same(const unsigned char *a, const unsigned char *b, size_t n)
{
    unsigned char d = 0;  /* constant time: a wrong proof must not tell how much was right */
    while (n--)
        d |= *a++ ^ *b++;
    return d == 0;
}

static int write_all(int fd, const void *buf, size_t len)
{
    const char *p = buf;
    while (len) {
        ssize_t n = write(fd, p, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN) {
                struct pollfd pf = {fd, POLLOUT, 0};
                if (poll(&pf, 1, 1000) == 0 || (pf.revents & (POLLHUP | POLLERR)))
                    return -1;
                continue;
            }
            return -1;
        }
        p += n;
        len -= n;
    }
    return 0;
}

static void send_frame(struct session *s, char type, const void *data, uint32_t len)
{
    unsigned char h[5] = {type, len & 0xff, (len >> 8) & 0xff, (len >> 16) & 0xff, len >> 24};
    if (!s->connected)
        return;
    if (write_all(s->fd, h, 5) < 0 || write_all(s->fd, data, len) < 0)
        s->connected = 0;
}

static void close_fd(int *fd)
{
    if (*fd >= 0)
        close(*fd);
    *fd = -1;
}

static void end_session(struct session *s)
{
    if (s->pid > 0 && !s->exited)
        kill(-s->pid, SIGKILL), kill(s->pid, SIGKILL);
    if (s->out == s->stdin_fd)
        s->stdin_fd = -1;
    close_fd(&s->out);
    close_fd(&s->err);
    close_fd(&s->stdin_fd);
    free(s->pend);
    s->pend = NULL;
    s->pendlen = 0;
    if (s->exited || s->pid <= 0)
        s->pid = 0;  /* a killed child is forgotten when reaped */
    s->exited = 0;
    s->stdin_eof = 0;
}

static void maybe_exit(struct session *s)
{
    char buf[16];
    int code;
    if (s->pid <= 0 || !s->exited || s->out >= 0 || s->err >= 0)
        return;
    code = WIFEXITED(s->status) ? WEXITSTATUS(s->status) : 128 + WTERMSIG(s->status);
    snprintf(buf, sizeof buf, "%d", code);
    send_frame(s, 'x', buf, strlen(buf));
    close_fd(&s->stdin_fd);
    s->pid = 0;
    s->exited = 0;
}

static void start_exec(struct session *s, char *p, uint32_t len)
{
    char *end = p + len, *fields[4096];
    int n = 0, envc, i, errpipe[2], in[2] = {-1, -1}, out[2] = {-1, -1}, er[2] = {-1, -1};
    int master = -1, slave = -1, e;
    char *flags, *cwd, *user, *g;
    unsigned uid = 0, gid = 0;
    gid_t groups[64];
    int ngroups = 0;

    if (s->pid > 0) {
        const char m[] = "ctrun-agent: a command already runs on this port\n";
        send_frame(s, 'e', m, sizeof m - 1);
        send_frame(s, 'x', "125", 3);
        return;
    }
    while (p < end && n < 4095) {
        fields[n++] = p;
        p += strnlen(p, end - p) + 1;
    }
    fields[n] = NULL;
    if (n < 5)
        goto bad;
    flags = fields[0], cwd = fields[1], user = fields[2];
    sscanf(user, "%u:%u", &uid, &gid);
    if ((g = strchr(user, ':')) && (g = strchr(g + 1, ':')))
        while (*++g && ngroups < 64) {
            groups[ngroups++] = (gid_t)strtoul(g, &g, 10);
            if (*g != ',')
                break;
        }
    for (envc = 3; envc < n && fields[envc][0]; envc++)
        ;
    if (envc >= n - 1)
        goto bad;
    s->tty = strchr(flags, 't') != NULL;
    s->init = strchr(flags, 'k') != NULL;
    if (s->tty) {
        master = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
        if (master < 0 || grantpt(master) || unlockpt(master))
            goto fail;
        slave = open(ptsname(master), O_RDWR | O_NOCTTY);
        if (slave < 0)
            goto fail;
    } else if (pipe2(in, O_CLOEXEC) || pipe2(out, O_CLOEXEC) || pipe2(er, O_CLOEXEC)) {
        goto fail;
    }
    if (pipe2(errpipe, O_CLOEXEC))
        goto fail;
    s->pid = fork();
    if (s->pid == 0) {
        sigset_t all;
        sigemptyset(&all);
        sigprocmask(SIG_SETMASK, &all, NULL);
        signal(SIGPIPE, SIG_DFL);
        setsid();
        if (s->tty) {
            ioctl(slave, TIOCSCTTY, 0);
            dup2(slave, 0), dup2(slave, 1), dup2(slave, 2);
        } else {
            dup2(in[0], 0), dup2(out[1], 1), dup2(er[1], 2);
        }
        clearenv();
        for (i = 3; i < envc; i++)
            putenv(fields[i]);
        if (!getenv("PATH"))
            putenv("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
        if ((cwd[0] && chdir(cwd)) || setgroups(ngroups, groups) || setgid(gid) || setuid(uid)) {
            e = errno;
            write(errpipe[1], &e, sizeof e);
            _exit(126);
        }
        execvp(fields[envc + 1], fields + envc + 1);
        e = errno;
        write(errpipe[1], &e, sizeof e);
        _exit(127);
    }
    close(errpipe[1]);
    if (s->tty)
        close(slave);
    else
        close(in[0]), close(out[1]), close(er[1]);
    if (s->pid < 0) {
        close(errpipe[0]);
        goto fail;
    }
    if (read(errpipe[0], &e, sizeof e) == sizeof e) {
        char m[512];
        int l = snprintf(m, sizeof m, "ctrun-agent: cannot run %s: %s\n", fields[envc + 1],
                         strerror(e));
        close(errpipe[0]);
        waitpid(s->pid, NULL, 0);
        s->pid = 0;
        if (s->tty)
            close(master);
        else
            close(in[1]), close(out[0]), close(er[0]);
        send_frame(s, 'e', m, l);
        send_frame(s, 'x', e == ENOENT ? "127" : "126", 3);
        return;
    }
    close(errpipe[0]);
    if (s->tty) {
        s->out = s->stdin_fd = master;
        s->err = -1;
    } else {
        s->stdin_fd = in[1], s->out = out[0], s->err = er[0];
        if (!strchr(flags, 'i'))
            close_fd(&s->stdin_fd);
    }
    if (s->stdin_fd >= 0)
        fcntl(s->stdin_fd, F_SETFL, fcntl(s->stdin_fd, F_GETFL) | O_NONBLOCK);
    return;
bad:
    send_frame(s, 'e', "ctrun-agent: bad exec request\n", 30);
    send_frame(s, 'x', "125", 3);
    return;
fail:
    e = errno;
    {
        char m[256];
        int l = snprintf(m, sizeof m, "ctrun-agent: exec failed: %s\n", strerror(e));
        send_frame(s, 'e', m, l);
        send_frame(s, 'x', "125", 3);
    }
    close_fd(&master), close_fd(&slave);
}

static long meminfo(const char *key)
{
    char line[256];
    long v = -1;
    FILE *f = fopen("/proc/meminfo", "r");
    if (!f)
        return -1;
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, key, strlen(key)) && line[strlen(key)] == ':') {
            v = atol(line + strlen(key) + 1);
            break;
        }
    fclose(f);
    return v;
}

static void stats(struct session *s)
{
    char out[1024], line[512] = "";
    unsigned long long u = 0, ni = 0, sy = 0, id = 0;
    double up = 0;
    int procs = 0, l;
    FILE *f = fopen("/proc/stat", "r");
    DIR *d;
    struct dirent *de;
    if (f) {
        if (fgets(line, sizeof line, f))
            sscanf(line, "cpu %llu %llu %llu %llu", &u, &ni, &sy, &id);
        fclose(f);
    }
    if ((f = fopen("/proc/uptime", "r"))) {
        if (fscanf(f, "%lf", &up) != 1)
            up = 0;
        fclose(f);
    }
    if ((d = opendir("/proc"))) {
        while ((de = readdir(d)))
            procs += de->d_name[0] >= '0' && de->d_name[0] <= '9';
        closedir(d);
    }
    l = snprintf(out, sizeof out,
                 "mem_total_kb %ld\nmem_available_kb %ld\ncpu_user_ticks %llu\n"
                 "cpu_system_ticks %llu\ncpu_idle_ticks %llu\nclock_ticks %ld\n"
                 "uptime %.2f\nprocesses %d\nonline_cpus %ld\n",
                 meminfo("MemTotal"), meminfo("MemAvailable"), u + ni, sy, id,
                 sysconf(_SC_CLK_TCK), up, procs, sysconf(_SC_NPROCESSORS_ONLN));
    send_frame(s, 's', out, l);
}

static void challenge(struct session *s, const char *p, uint32_t len)
{
    unsigned char buf[NONCE + MAXHNONCE];
    end_session(s);
    s->authed = 0;
    s->hnlen = len < MAXHNONCE ? len : MAXHNONCE;
    memcpy(s->hnonce, p, s->hnlen);
    if (getrandom(s->anonce, NONCE, 0) != NONCE) {
        s->challenged = 0;
        return;  /* no nonce, no session: the host times out */
    }
    s->challenged = 1;
    memcpy(buf, s->anonce, NONCE);
    memcpy(buf + NONCE, s->hnonce, s->hnlen);
    send_frame(s, 'c', buf, NONCE + s->hnlen);
}

/* the host's answer to the challenge: 0 when it holds the key */
static int answer(struct session *s, const unsigned char *p, uint32_t len)
{
    unsigned char want[32], buf[32 + 65];
    struct utsname u;
    int l;
    if (!s->challenged || len != 32)
        return -1;
    s->challenged = 0;  /* one try per nonce */
    proof("ctrun-host", s->anonce, NONCE, s->hnonce, s->hnlen, want);
    if (!same(want, p, 32))
        return -1;
    s->authed = 1;
    proof("ctrun-agent", s->hnonce, s->hnlen, s->anonce, NONCE, buf);
    uname(&u);
    l = snprintf((char *)buf + 32, sizeof buf - 32, "%s", u.release);
    send_frame(s, 'h', buf, 32 + (l < 65 ? l : 64));
    return 0;
}

/* Is the guest's PID 1 systemd?  A VM's stop must power the machine off: systemd takes
 * SIGTERM as "re-execute yourself" and SIGRTMIN+3 as halt, which leaves the CPU halted
 * and QEMU running; SIGRTMIN+4 is its orderly power-off. */
static int init_is_systemd(void)
{
    char exe[4096], *base;
    ssize_t n = readlink("/proc/1/exe", exe, sizeof exe - 1);
    if (n <= 0)
        return 0;
    exe[n] = 0;
    if (n > 10 && !strcmp(exe + n - 10, " (deleted)"))  /* upgraded in the guest */
        exe[n - 10] = 0;
    base = strrchr(exe, '/');
    return !strcmp(base ? base + 1 : exe, "systemd");
}

/* Ask a sysvinit PID 1 for runlevel 0 on its control FIFO, as `telinit 0` does: its init
 * ignores SIGTERM, and Debian's inittab turns SIGINT into a reboot and SIGPWR into a
 * script Debian does not ship.  The halt script's reboot(RB_POWER_OFF) then ends QEMU.
 * 0 when the request was written (no FIFO, as under other inits: -1). */
static int sysvinit_halt(void)
{
    struct stat st;
    unsigned char req[384] = {0};  /* sysvinit's struct init_request */
    int v[4] = {0x03091969, 1 /* INIT_CMD_RUNLVL */, '0', 3 /* s between TERM and KILL */};
    int ok, fd = open("/run/initctl", O_WRONLY | O_NONBLOCK | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return -1;
    memcpy(req, v, sizeof v);
    ok = !fstat(fd, &st) && S_ISFIFO(st.st_mode) && write(fd, req, sizeof req) == sizeof req;
    close(fd);
    return ok ? 0 : -1;
}

/* one frame from the host; -1: refused, the caller drops the session's input */
static int frame(struct session *s, unsigned char type, char *p, uint32_t len)
{
    char buf[512];
    if (type == 'H') {
        challenge(s, p, len);
        return 0;
    }
    if (type == 'A' ? answer(s, (unsigned char *)p, len) : !s->authed) {
        static const char m[] = "ctrun-agent: refused: this client did not prove the VM's key";
        end_session(s);
        s->authed = s->challenged = 0;
        send_frame(s, 'n', m, sizeof m - 1);
        return -1;
    }
    switch (type) {
    case 'O':
        p[len] = 0;
        start_exec(s, p, len);
        break;
    case 'I':
        if (s->stdin_fd >= 0 && len) {
            s->pend = realloc(s->pend, s->pendlen + len);
            memcpy(s->pend + s->pendlen, p, len);
            s->pendlen += len;
        }
        break;
    case 'E':
        s->stdin_eof = 1;
        if (s->tty && s->stdin_fd >= 0) {  /* a terminal has no EOF; send ^D as a user would */
            s->pend = realloc(s->pend, s->pendlen + 1);
            s->pend[s->pendlen++] = 4;
            s->stdin_eof = 0;
        }
        break;
    case 'R': {
        struct winsize ws = {0};
        snprintf(buf, sizeof buf, "%.*s", (int)(len < 64 ? len : 64), p);
        if (s->tty && s->out >= 0 &&
            sscanf(buf, "%hu %hu", &ws.ws_row, &ws.ws_col) == 2)
            ioctl(s->out, TIOCSWINSZ, &ws);
        break;
    }
    case 'K':
        snprintf(buf, sizeof buf, "%.*s", (int)(len < 16 ? len : 16), p);
        if (s->pid > 0 && !s->exited)
            kill(s->pid, atoi(buf));
        break;
    case 'S':
        stats(s);
        break;
    case 'Q':  /* are you there? (a host client waiting on a silent command asks) */
        send_frame(s, 'q', "", 0);
        break;
    case 'D': {
        int sig;
        snprintf(buf, sizeof buf, "%.*s", (int)(len < 32 ? len : 32), p);
        sig = atoi(buf) ? atoi(buf) : SIGTERM;
        if (strstr(buf, " poweroff") && init_is_systemd()) {
            kill(1, SIGRTMIN + 4);  /* systemd's poweroff.target */
            send_frame(s, 'd', "poweroff", 8);
            break;
        }
        if (strstr(buf, " poweroff") && !sysvinit_halt()) {
            send_frame(s, 'd', "poweroff", 8);
            break;
        }
        kill(1, sig);
        send_frame(s, 'd', "", 0);
        break;
    }
    case 'P':
        send_frame(s, 'd', "", 0);
        sync();
        reboot(RB_POWER_OFF);
        break;
    }
    return 0;
}

static void hangup(struct session *s)
{
    s->connected = 0;   /* the host hung up: end the session; the next client proves anew */
    end_session(s);
    s->inlen = 0;
    s->authed = s->challenged = 0;
    if (s->vsock) {
        close(s->fd);
        s->fd = -1;
        s->vsock = 0;
    }
}

static void accept_vsock(int lfd)
{
    struct sockaddr_vm peer;
    socklen_t plen = sizeof peer;
    int i, fd = accept4(lfd, (struct sockaddr *)&peer, &plen, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0)
        return;
    if (plen < sizeof peer || peer.svm_family != AF_VSOCK || peer.svm_cid != VMADDR_CID_HOST) {
        close(fd);  /* a guest process over vsock loopback, or another VM: never a client */
        return;
    }
    for (i = 0; i < MAXPORTS; i++)
        if (ports[i].fd < 0 || i >= nports)
            break;
    if (i == MAXPORTS) {  /* every session slot busy */
        close(fd);
        return;
    }
    if (i == nports)
        nports++;
    memset(&ports[i], 0, sizeof ports[i]);
    ports[i].fd = fd;
    ports[i].vsock = 1;
    ports[i].out = ports[i].err = ports[i].stdin_fd = -1;
    ports[i].connected = 1;
}

static int listen_vsock(void)
{
    struct sockaddr_vm a = {.svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY,
                            .svm_port = VSOCK_PORT};
    int fd = socket(AF_VSOCK, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    if (bind(fd, (struct sockaddr *)&a, sizeof a) || listen(fd, 16)) {
        close(fd);
        return -1;
    }
    return fd;
}

static void read_port(struct session *s)
{
    ssize_t n = read(s->fd, s->in + s->inlen, sizeof s->in - 1 - s->inlen);
    size_t off = 0;
    if (n <= 0) {
        if (n == 0 || (errno != EAGAIN && errno != EINTR))
            hangup(s);
        return;
    }
    s->inlen += n;
    while (s->inlen - off >= 5) {
        unsigned char *h = s->in + off;
        uint32_t len = h[1] | h[2] << 8 | h[3] << 16 | (uint32_t)h[4] << 24;
        if (len > MAXFRAME) {   /* garbage: drop it all, the host re-syncs with H */
            off = s->inlen;
            break;
        }
        if (s->inlen - off < 5 + len)
            break;
        {
            unsigned char save = h[5 + len];
            if (frame(s, h[0], (char *)h + 5, len) < 0) {
                s->inlen = 0;  /* nothing more from this client is read */
                if (s->vsock)
                    hangup(s);
                return;
            }
            if (s->inlen - off > 5 + len)
                h[5 + len] = save;
        }
        off += 5 + len;
    }
    memmove(s->in, s->in + off, s->inlen - off);
    s->inlen -= off;
}

static void pump(struct session *s, int *fd, char type)
{
    char buf[32768];
    ssize_t n = read(*fd, buf, sizeof buf);
    if (n > 0) {
        send_frame(s, type, buf, n);
        return;
    }
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (*fd == s->stdin_fd)  /* the pty master: done when the last slave closes (EIO) */
        s->stdin_fd = -1;
    close_fd(fd);
    maybe_exit(s);
}

/* what is left in an output pipe is sent, and the pipe closed */
static void drain_close(struct session *s, int *fd, char type)
{
    char buf[32768];
    ssize_t n;
    if (*fd < 0)
        return;
    fcntl(*fd, F_SETFL, fcntl(*fd, F_GETFL) | O_NONBLOCK);
    while ((n = read(*fd, buf, sizeof buf)) > 0)
        send_frame(s, type, buf, n);
    if (*fd == s->stdin_fd)
        s->stdin_fd = -1;
    close_fd(fd);
}

static void find_ports(void)
{
    DIR *d = opendir("/sys/class/virtio-ports");
    struct dirent *de;
    char path[512], name[128];
    if (!d)
        return;
    while ((de = readdir(d)) && nports < MAXPORTS) {
        FILE *f;
        int fd;
        if (de->d_name[0] == '.')
            continue;
        snprintf(path, sizeof path, "/sys/class/virtio-ports/%s/name", de->d_name);
        if (!(f = fopen(path, "r")))
            continue;
        name[0] = 0;
        if (!fgets(name, sizeof name, f))
            name[0] = 0;
        fclose(f);
        if (strncmp(name, "ctrun.agent.", 12))
            continue;
        snprintf(path, sizeof path, "/dev/%s", de->d_name);
        fd = open(path, O_RDWR | O_NONBLOCK | O_CLOEXEC);
        if (fd < 0)
            continue;
        /* the kernel sends SIGIO when the host connects or hangs up */
        fcntl(fd, F_SETOWN, getpid());
        fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_ASYNC);
        memset(&ports[nports], 0, sizeof ports[0]);
        ports[nports].fd = fd;
        ports[nports].out = ports[nports].err = ports[nports].stdin_fd = -1;
        ports[nports].connected = 1;
        nports++;
    }
    closedir(d);
}

/* the start's key, from the initramfs (before the chroot), then gone from every view but
 * this process's memory: nothing the image runs can read it from a file */
static int load_key(void)
{
    int fd = open(KEY_FILE, O_RDONLY | O_CLOEXEC | O_NOFOLLOW), n = -1;
    if (fd >= 0) {
        n = read(fd, key, KEYLEN);
        close(fd);
    }
    unlink(KEY_FILE);
    if (n != KEYLEN) {
        fprintf(stderr, "ctrun-agent: no %d-byte key in %s\n", KEYLEN, KEY_FILE);
        return -1;
    }
    return 0;
}

static int agent_main(int argc, char **argv)
{
    sigset_t mask;
    int sfd, lfd, i;

    if (load_key())
        return 1;
    if (argc > 1 && (chroot(argv[1]) || chdir("/"))) {
        perror("ctrun-agent: chroot");
        return 1;
    }
    if (argc > 1 && fork() > 0)  /* the init script goes on to switch_root */
        return 0;
    setsid();
    signal(SIGPIPE, SIG_IGN);
    signal(SIGHUP, SIG_IGN);
    sigemptyset(&mask);
    sigaddset(&mask, SIGCHLD);
    sigaddset(&mask, SIGIO);
    sigprocmask(SIG_BLOCK, &mask, NULL);
    sfd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
    lfd = listen_vsock();
    for (i = 0; i < 50 && !nports; i++) {  /* udev-less: the ports appear as the driver probes */
        find_ports();
        if (!nports && (lfd < 0 || access("/sys/class/virtio-ports", F_OK) == 0))
            usleep(20000);
        else if (!nports)
            break;  /* vsock only */
    }
    if (!nports && lfd < 0) {
        fprintf(stderr, "ctrun-agent: no ctrun.agent.N virtio port and no vsock\n");
        return 1;
    }
    /* QEMU drops what a host client wrote before the guest opened the port: tell every
     * client already connected that we are here, so it says hello again */
    for (i = 0; i < nports; i++) {
        struct pollfd p = {ports[i].fd, POLLOUT, 0};
        if (poll(&p, 1, 0) < 0 || (p.revents & POLLHUP))
            ports[i].connected = 0;
        else
            send_frame(&ports[i], 'r', "", 0);
    }
    for (;;) {
        struct pollfd pf[2 + MAXPORTS * 4];
        struct session *owner[2 + MAXPORTS * 4];
        int *which[2 + MAXPORTS * 4];
        int n = 0, timeout = -1;
        pf[n] = (struct pollfd){sfd, POLLIN, 0}, owner[n] = NULL, which[n++] = NULL;
        if (lfd >= 0)
            pf[n] = (struct pollfd){lfd, POLLIN, 0}, owner[n] = NULL, which[n++] = &lfd;
        for (i = 0; i < nports; i++) {
            struct session *s = &ports[i];
            if (s->fd < 0)
                continue;
            if (!s->connected) {
                timeout = 1000;  /* a lost SIGIO must not strand a port */
                continue;
            }
            pf[n] = (struct pollfd){s->fd, POLLIN, 0}, owner[n] = s, which[n++] = &s->fd;
            if (s->out >= 0)
                pf[n] = (struct pollfd){s->out, POLLIN, 0}, owner[n] = s, which[n++] = &s->out;
            if (s->err >= 0)
                pf[n] = (struct pollfd){s->err, POLLIN, 0}, owner[n] = s, which[n++] = &s->err;
            if (s->stdin_fd >= 0 && s->stdin_fd != s->out && (s->pendlen || s->stdin_eof))
                pf[n] = (struct pollfd){s->stdin_fd, POLLOUT, 0}, owner[n] = s,
                which[n++] = &s->stdin_fd;
            else if (s->stdin_fd >= 0 && s->stdin_fd == s->out && s->pendlen)
                pf[n - 1 - (s->err >= 0)].events |= POLLOUT;
        }
        if (poll(pf, n, timeout) < 0 && errno != EINTR)
            return 1;
        if (pf[0].revents & POLLIN) {
            struct signalfd_siginfo si;
            while (read(sfd, &si, sizeof si) == sizeof si)
                ;
        }
        /* reap: a session's command, or an orphan re-parented to us */
        for (;;) {
            int st;
            pid_t pid = waitpid(-1, &st, WNOHANG);
            if (pid <= 0)
                break;
            for (i = 0; i < nports; i++)
                if (ports[i].pid == pid) {
                    ports[i].status = st, ports[i].exited = 1;
                    if (ports[i].init) {  /* a background child may hold its output */
                        kill(-pid, SIGKILL);
                        drain_close(&ports[i], &ports[i].out, 'o');
                        drain_close(&ports[i], &ports[i].err, 'e');
                    }
                    if (!ports[i].connected)
                        ports[i].pid = 0;
                    maybe_exit(&ports[i]);
                }
        }
        if (lfd >= 0 && (pf[1].revents & POLLIN))
            accept_vsock(lfd);
        for (i = 0; i < nports; i++)  /* a port comes back when the host reconnects */
            if (!ports[i].connected && !ports[i].vsock && ports[i].fd >= 0) {
                struct pollfd p = {ports[i].fd, POLLIN, 0};
                if (poll(&p, 1, 0) >= 0 && !(p.revents & POLLHUP))
                    ports[i].connected = 1;
            }
        for (i = 1; i < n; i++) {
            struct session *s = owner[i];
            if (!s || !pf[i].revents || !s->connected || s->fd < 0)
                continue;
            if (which[i] == &s->fd) {
                if (pf[i].revents & POLLIN)
                    read_port(s);
                else if (pf[i].revents & (POLLHUP | POLLERR))
                    hangup(s);
                continue;
            }
            if ((pf[i].revents & POLLOUT) && s->stdin_fd >= 0 && s->pendlen) {
                ssize_t w = write(s->stdin_fd, s->pend, s->pendlen);
                if (w > 0) {
                    memmove(s->pend, s->pend + w, s->pendlen - w);
                    s->pendlen -= w;
                }
            }
            if (s->stdin_eof && !s->pendlen && s->stdin_fd >= 0 && s->stdin_fd != s->out)
                close_fd(&s->stdin_fd);
            if (*which[i] >= 0 && (pf[i].revents & (POLLIN | POLLHUP | POLLERR)) &&
                which[i] != &s->stdin_fd)
                pump(s, which[i], which[i] == &s->err ? 'e' : 'o');
            else if (which[i] == &s->stdin_fd && (pf[i].revents & (POLLERR | POLLHUP)))
                close_fd(&s->stdin_fd);
        }
    }
}

#ifdef AGENT_SELFTEST
/* for the unit tests: HMAC-SHA256 of argv[2] (hex) under the key argv[1] (hex), in hex */
static void unhex(const char *h, unsigned char *out, size_t *n)
{
    unsigned v;
    for (*n = 0; h[0] && h[1] && sscanf(h, "%2x", &v) == 1; h += 2)
        out[(*n)++] = v;
}

int main(int argc, char **argv)
{
    unsigned char msg[4096], mac[32];
    size_t n, i;
    if (argc != 3 || strlen(argv[1]) != 2 * KEYLEN || strlen(argv[2]) > 2 * sizeof msg)
        return 2;
    unhex(argv[1], key, &n);
    unhex(argv[2], msg, &n);
    hmac_sha256(key, msg, n, mac);
    for (i = 0; i < 32; i++)
        printf("%02x", mac[i]);
    printf("\n");
    return 0;
}
#else
int main(int argc, char **argv)
{
    return agent_main(argc, argv);
}
#endif
