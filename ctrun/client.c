/* The `ctrun` command's fast path: ctrun.client's protocol, compiled.
 *
 * Why C: a served call's own work (a list, an exec) takes a few milliseconds in the warm
 * server, and the Python interpreter's start alone costs ~7 ms, more than runc's whole
 * `exec`.  This program does only what a call to a running server needs: it finds the store
 * as ctrun.client does, sends the same request (argv, environment, umask, stdin, stdout,
 * stderr and the working directory as fds), relays the same signals and exits as the worker
 * did.  Everything else is the Python client's (CTRUN_FALLBACK, exec'd with this argv):
 * no server yet (it starts one), --help, --debug, the lab, CTRUN_SERVER=off, not root, a
 * refused or lost request before the server took it, an ambiguous PYTHONPATH.  So the two
 * never disagree on a decision this file does not take.
 *
 * Built by setup.sh: gcc -O2 -DCTRUN_FALLBACK='"<python client>"'
 *                         -DCTRUN_PACKAGE='"<the ctrun package directory it runs>"'
 *
 * With -DCTRUN_OCI it is /usr/local/bin/ctrun-oci instead (ctrun.oci.serving): it serves
 * the light verbs (state, start, kill, delete) from the warm server of the call's --root,
 * in OCI_SERVERS/<hash of the root>, and execs the Python ctrun-oci (CTRUN_FALLBACK) for
 * every other verb, global flags it does not know, and whenever no server answers (that
 * call starts one).  Only where_served() differs between the two.
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <termios.h>
#include <unistd.h>

#ifndef CTRUN_FALLBACK
#error "define CTRUN_FALLBACK: the Python client to exec when this one does not serve a call"
#endif
#ifndef CTRUN_PACKAGE
#error "define CTRUN_PACKAGE: the ctrun package directory the Python client imports"
#endif

#ifdef CTRUN_OCI
#define PROG "ctrun-oci"
#define MAGIC "ctrun-oci1"
#define DEFAULT_ROOT "/run/ctrun-oci" /* ctrun.oci.store.DEFAULT_ROOT */
#define OCI_SERVERS "/run/ctrun-oci-servers" /* ctrun.serversock */
#else
#define PROG "ctrun"
#define MAGIC "ctrun1"
#define DEFAULT_ROOT "/var/lib/ctrun"
#endif
#define SOCK "/server.sock"

extern char **environ;
static char **args;
static const int relayed[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGWINCH};
#define NRELAYED (sizeof relayed / sizeof relayed[0])
static sigset_t relayed_set, old_mask;
static volatile sig_atomic_t sock = -1;

/* The Python client decides: it starts a server, or runs the call in its own process. */
static void fallback(void) {
    if (sock >= 0)
        close(sock);
    /* a relayed signal that came meanwhile ends the process as it would have ended the CLI */
    sigprocmask(SIG_SETMASK, &old_mask, NULL);
    execv(CTRUN_FALLBACK, args);
    fprintf(stderr, PROG ": error: cannot run %s: %s; run ./setup.sh again\n", CTRUN_FALLBACK,
            strerror(errno));
    exit(1);
}

#ifndef CTRUN_OCI
static int is_help(const char *t) {
    static const char *const help[] = {"-h", "--h", "--he", "--hel", "--help"};
    for (size_t i = 0; i < sizeof help / sizeof help[0]; i++)
        if (!strcmp(t, help[i]))
            return 1;
    return 0;
}

/* argparse takes an unambiguous prefix of --root */
static int is_root_flag(const char *t, size_t n) {
    return n >= 3 && n <= 6 && !strncmp(t, "--root", n);
}
#endif

/* os.path.abspath: the working directory joined, "." and ".." and repeated slashes folded
 * lexically (no symlink resolved), as the Python client names the store */
static int abspath(const char *p, char *out, size_t size) {
    char buf[PATH_MAX * 2];
    if (p[0] == '/') {
        if (strlen(p) >= sizeof buf)
            return -1;
        strcpy(buf, p);
    } else {
        char cwd[PATH_MAX];
        if (!getcwd(cwd, sizeof cwd) || snprintf(buf, sizeof buf, "%s/%s", cwd, p) >= (int)sizeof buf)
            return -1;
    }
    /* POSIX leaves a path's two leading slashes (not one, not three) to the implementation:
     * normpath keeps them */
    size_t n = buf[0] == '/' && buf[1] == '/' && buf[2] != '/' ? 1 : 0, top = n;
    if (n)
        out[0] = '/';
    for (char *save, *c = strtok_r(buf, "/", &save); c; c = strtok_r(NULL, "/", &save)) {
        if (!strcmp(c, "."))
            continue;
        if (!strcmp(c, "..")) {
            while (n > top && out[--n] != '/')
                ;
            continue;
        }
        size_t k = strlen(c);
        if (n + k + 2 > size)
            return -1;
        out[n++] = '/';
        memcpy(out + n, c, k);
        n += k;
    }
    if (n == top)
        out[n++] = '/';
    out[n] = 0;
    return 0;
}

#ifndef CTRUN_OCI
/* ctrun.client.store_root: the store this call is served from (root) and its run directory
 * (run), or fallback() */
static void where_served(int argc, char **argv, char *root, size_t size, char *run) {
    const char *value = NULL, *verb = NULL;
    for (int i = 1; i < argc && strcmp(argv[i], "--"); i++) {
        const char *t = argv[i];
        if (is_help(t))
            fallback();
        if (verb)
            continue;
        if (t[0] != '-') {
            verb = t;
            continue;
        }
        const char *eq = strchr(t, '=');
        if (!is_root_flag(t, eq ? (size_t)(eq - t) : strlen(t)))
            fallback(); /* --debug, or what the parser refuses: the Python client's */
        if (eq)
            value = eq + 1;
        else if (++i < argc)
            value = argv[i];
        else
            fallback();
    }
    if (!verb || !strcmp(verb, "lab"))
        fallback();
    if (!value || !*value)
        value = getenv("CTRUN_ROOT");
    if (!value || !*value)
        value = DEFAULT_ROOT;
    struct sockaddr_un a;
    struct stat st;
    if (abspath(value, root, size) || strlen(root) + strlen("/run" SOCK) >= sizeof a.sun_path)
        fallback();
    snprintf(run, PATH_MAX + 8, "%s/run", strcmp(root, "/") ? root : "");
    if (stat(run, &st) || !S_ISDIR(st.st_mode))
        fallback(); /* a store not made yet: the Python client's */
}
#else
/* ctrun.oci.cli.parse's global flags, as far as a served call may have them: the value of
 * --root, --log, --log-format; --systemd-cgroup.  Anything else (--debug, --help, a
 * misspelling) is the Python ctrun-oci's to handle. */
static int oci_flag(const char *t, const char **root, int *takes_value) {
    static const char *const valued[] = {"root", "log", "log-format"};
    const char *name = t[1] == '-' ? t + 2 : t + 1; /* runc's -root is --root */
    size_t n = strcspn(name, "=");
    if (t[1] != '-' && n < 2)
        return 0; /* a short flag: -h, -v */
    for (size_t i = 0; i < sizeof valued / sizeof valued[0]; i++)
        if (strlen(valued[i]) == n && !strncmp(name, valued[i], n)) {
            *takes_value = name[n] != '=';
            if (!i && !*takes_value)
                *root = name + n + 1;
            return 1 + !i; /* 2: --root, whose value the caller takes */
        }
    *takes_value = 0;
    return n == strlen("systemd-cgroup") && !strncmp(name, "systemd-cgroup", n);
}

/* The root (ctrun-oci --root, absolute) of a call to a served verb, and its server's run
 * directory (ctrun.serversock.oci_run_dir), or fallback() */
static void where_served(int argc, char **argv, char *root, size_t size, char *run) {
    static const char *const served[] = {"state", "start", "kill", "delete"};
    const char *value = NULL;
    int i = 1;
    for (; i < argc && argv[i][0] == '-' && argv[i][1] && strcmp(argv[i], "--"); i++) {
        int takes_value, kind = oci_flag(argv[i], &value, &takes_value);
        if (!kind)
            fallback();
        if (takes_value) {
            if (++i == argc)
                fallback();
            if (kind == 2)
                value = argv[i];
        }
    }
    if (i == argc)
        fallback();
    size_t k = 0;
    while (k < sizeof served / sizeof served[0] && strcmp(argv[i], served[k]))
        k++;
    if (k == sizeof served / sizeof served[0])
        fallback(); /* create, run, exec...: their processes are the caller's to reap */
    if (!value || !*value)
        value = DEFAULT_ROOT;
    if (abspath(value, root, size))
        fallback();
    unsigned long long h = 0xcbf29ce484222325ULL; /* FNV-1a, 64 bits */
    for (const unsigned char *c = (const unsigned char *)root; *c; c++)
        h = (h ^ *c) * 0x100000001b3ULL;
    snprintf(run, PATH_MAX + 8, OCI_SERVERS "/%016llx", h);
}
#endif

/* Whether directory d holds anything Python could import as ctrun (a directory without
 * __init__.py, ctrun.py, ctrun.pyc, an extension module) */
static int has_ctrun(const char *d) {
    DIR *dir = opendir(d);
    struct dirent *de;
    int found = 0;
    if (!dir)
        return 1;
    while (!found && (de = readdir(dir)))
        found = !strcmp(de->d_name, "ctrun") || !strncmp(de->d_name, "ctrun.", 6);
    closedir(dir);
    return found;
}

/* The ctrun package the Python client would import: the first PYTHONPATH entry holding
 * one, else the installed one.  What this cannot tell as Python would is the Python
 * client's to decide. */
static void package_dir(char *out) {
    const char *pp = getenv("PYTHONPATH");
    if (pp && *pp) {
        char *copy = strdup(pp), *save, path[PATH_MAX + 32];
        struct stat st;
        /* an empty entry is the working directory on sys.path */
        if (!copy || strstr(pp, "::") || pp[0] == ':' || pp[strlen(pp) - 1] == ':')
            fallback();
        for (char *e = strtok_r(copy, ":", &save); e; e = strtok_r(NULL, ":", &save)) {
            if (e[0] != '/' || strlen(e) > PATH_MAX)
                fallback(); /* relative to the working directory, or too long to name */
            snprintf(path, sizeof path, "%s/ctrun/__init__.py", e);
            if (!stat(path, &st) && S_ISREG(st.st_mode)) {
                snprintf(path, sizeof path, "%s/ctrun", e);
                if (!realpath(path, out))
                    fallback();
                free(copy);
                return;
            }
            if (stat(e, &st))
                continue; /* not there: Python skips it too */
            if (!S_ISDIR(st.st_mode) || has_ctrun(e))
                fallback(); /* a zip, a module, a namespace package: Python's to read */
        }
        free(copy);
    }
    snprintf(out, PATH_MAX, "%s", CTRUN_PACKAGE);
}

struct buf {
    char *p;
    size_t len, cap;
};

static void add(struct buf *b, const char *s, size_t n) {
    if (b->len + n + 1 > b->cap) {
        while (b->len + n + 1 > b->cap)
            b->cap *= 2;
        if (!(b->p = realloc(b->p, b->cap)))
            fallback();
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len++] = 0;
}

/* ctrun.client._request: a 4-byte little-endian length, then NUL-separated fields */
static void request(struct buf *b, int argc, char **argv, const char *pkg) {
    char tmp[32];
    b->cap = 1 << 14;
    b->len = 4;
    if (!(b->p = malloc(b->cap)))
        fallback();
    mode_t um = umask(022);
    umask(um);
    add(b, MAGIC, strlen(MAGIC));
    add(b, pkg, strlen(pkg));
    add(b, tmp, snprintf(tmp, sizeof tmp, "%o", (unsigned)um));
    add(b, tmp, snprintf(tmp, sizeof tmp, "%d", argc - 1));
    for (int i = 1; i < argc; i++)
        add(b, argv[i], strlen(argv[i]));
    for (char **e = environ; *e; e++) {
        const char *eq = strchr(*e, '=');
        int first = eq != NULL;
        for (char **o = environ; first && o < e; o++)
            first = strncmp(*o, *e, eq - *e + 1) != 0;
        if (first) /* a name set twice: the first, as Python's os.environ and getenv take */
            add(b, *e, strlen(*e));
    }
    b->len--; /* separated, not terminated */
    unsigned n = b->len - 4;
    unsigned char le[4] = {n, n >> 8, n >> 16, n >> 24};
    memcpy(b->p, le, 4);
}

static void relay(int sig) {
    unsigned char c = sig;
    int saved = errno;
    if (sock >= 0)
        (void)!send(sock, &c, 1, MSG_NOSIGNAL);
    errno = saved;
}

/* A closed stdin, stdout or stderr becomes /dev/null (what the Python client sends for
 * it), before the socket is made: it would take the lowest free fd and go as that one */
static void stdio_open(void) {
    struct stat st;
    for (int i = 0; i < 3; i++)
        if (fstat(i, &st) && errno == EBADF && open("/dev/null", O_RDWR) != i)
            fallback();
}

static int send_request(struct buf *b) {
    int fds[4];
    for (int i = 0; i < 3; i++)
        fds[i] = i; /* open: see stdio_open */
    fds[3] = open(".", O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (fds[3] < 0)
        fds[3] = open("/", O_PATH | O_DIRECTORY | O_CLOEXEC);
    union {
        char space[CMSG_SPACE(sizeof fds)];
        struct cmsghdr align;
    } cm;
    memset(&cm, 0, sizeof cm);
    struct iovec iov = {b->p, b->len};
    struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cm.space,
                       .msg_controllen = sizeof cm.space};
    struct cmsghdr *c = CMSG_FIRSTHDR(&m);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof fds);
    memcpy(CMSG_DATA(c), fds, sizeof fds);
    ssize_t n = sendmsg(sock, &m, MSG_NOSIGNAL);
    /* never an empty send after the whole request: see ctrun.client._call */
    while (n > 0 && (size_t)n < b->len) {
        ssize_t k = send(sock, b->p + n, b->len - n, MSG_NOSIGNAL);
        n = k < 0 ? (errno == EINTR ? n : -1) : n + k;
    }
    close(fds[3]);
    return n < 0 ? -1 : 0;
}

int main(int argc, char **argv) {
    char root[PATH_MAX], pkg[PATH_MAX], run[PATH_MAX + 8];
    args = argv;
    /* the relayed signals wait, blocked, until the server has taken the call */
    sigemptyset(&relayed_set);
    for (size_t i = 0; i < NRELAYED; i++)
        sigaddset(&relayed_set, relayed[i]);
    sigprocmask(SIG_BLOCK, &relayed_set, &old_mask);

    const char *env = getenv("CTRUN_SERVER");
    if ((env && !strcmp(env, "off")) || geteuid() != 0)
        fallback();
    where_served(argc, argv, root, sizeof root, run);
    package_dir(pkg);
    struct buf b;
    request(&b, argc, argv, pkg);

    stdio_open();
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    if (snprintf(a.sun_path, sizeof a.sun_path, "%s" SOCK, run) >= (int)sizeof a.sun_path)
        fallback();
    sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (sock < 0 || connect(sock, (struct sockaddr *)&a, sizeof a))
        fallback(); /* no server: the Python client starts one */
    struct ucred cred;
    socklen_t len = sizeof cred;
    if (getsockopt(sock, SOL_SOCKET, SO_PEERCRED, &cred, &len) || cred.uid != 0)
        fallback(); /* not root's server: nothing of this call goes to it */
    struct termios saved_tty;
    int tty = isatty(0) && !tcgetattr(0, &saved_tty);
    char first = 0;
    if (send_request(&b) || read(sock, &first, 1) != 1 || first != 'S')
        fallback(); /* not taken: nothing ran */

    struct sigaction sa = {.sa_handler = relay, .sa_flags = SA_RESTART};
    sigemptyset(&sa.sa_mask);
    for (size_t i = 0; i < NRELAYED; i++)
        sigaction(relayed[i], &sa, NULL);
    sigprocmask(SIG_SETMASK, &old_mask, NULL);

    char reply[32];
    size_t r = 0;
    while (r < sizeof reply - 1) {
        ssize_t k = read(sock, reply + r, sizeof reply - 1 - r);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            break;
        r += k;
        if (reply[r - 1] == '\n')
            break;
    }
    reply[r] = 0;
    char *end;
    long v = r > 2 && reply[r - 1] == '\n' && isdigit((unsigned char)reply[1])
                 ? strtol(reply + 1, &end, 10) : -1;
    int valid = v >= 0 && end == reply + r - 1;
    if (valid && reply[0] == 'x')
        return (int)v;
    /* the worker was killed (a -t relay may have left the terminal raw), or the server died
     * while its worker ran this command */
    if (tty)
        tcsetattr(0, TCSADRAIN, &saved_tty);
    if (valid && reply[0] == 'k' && v > 0 && v < NSIG) {
        signal((int)v, SIG_DFL);
        sigset_t s;
        sigemptyset(&s);
        sigaddset(&s, (int)v);
        sigprocmask(SIG_UNBLOCK, &s, NULL);
        raise((int)v);
        return 128 + (int)v;
    }
    signal(SIGPIPE, SIG_IGN); /* a closed stderr: exit 1 all the same */
    fprintf(stderr, PROG ": error: the " PROG " server of %s stopped during this command; see "
                    "%s/server.log\n", root, run);
    return 1;
}
