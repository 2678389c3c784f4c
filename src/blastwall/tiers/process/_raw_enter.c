/*
 * HAZMAT: the launcher that runs *inside* the sandbox, just before the command.
 *
 * It is C, built at install time, so that no second Python starts inside on
 * every `blastwall run` (~18 ms).  bubblewrap has set up the namespaces, dropped capabilities, set no-new-privs
 * and installed the seccomp filter before executing this.  In order, it:
 *
 *   1. puts the real stderr back on fd 2 and closes every other inherited fd
 *      but the ready pipe;
 *   2. verifies the boundary: no-new-privs, seccomp in filter mode, no
 *      effective capabilities, and probes that must fail (a new user
 *      namespace; a unix socket, or a pair other than stream and seqpacket,
 *      unless the policy allows them, also with garbage in the family's upper half; a netlink socket;
 *      a setuid mode);
 *   3. applies Landlock: writes only beneath the --write hierarchies; with
 *      --read-parent, files read only through a rule on each entry the
 *      parent holds now but the --read-exclude ones (so a secret the host
 *      replaces or creates later stays unreadable); abstract unix sockets
 *      and signals scoped where the ABI allows;
 *   4. reports readiness, takes the terminal if asked, and execs the command.
 *
 * Misuse looks like: continuing after a failed check, exec'ing before Landlock
 * returned, or adding a code path that skips verification.  Exit status 125
 * means the launcher refused; messages start with "blastwall: ".
 *
 * Usage: blastwall-enter --stderr-fd N --ready-fd N [--write PATH]...
 *        [--read-parent DIR]... [--read-exclude PATH]...
 *        [--require-landlock] [--allow-unix] [--ctty] -- COMMAND [ARG]...
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <fcntl.h>
#include <sched.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <termios.h>
#include <unistd.h>

#include "../_raw_fail.h"

#ifndef SYS_landlock_create_ruleset
#define SYS_landlock_create_ruleset 444
#define SYS_landlock_add_rule 445
#define SYS_landlock_restrict_self 446
#endif
#ifndef SYS_close_range
#define SYS_close_range 436
#endif

#define FS_WRITE_FILE (1ULL << 1)
#define FS_READ_FILE (1ULL << 2)
#define FS_REMOVE_DIR (1ULL << 4)
#define FS_REMOVE_FILE (1ULL << 5)
#define FS_MAKE_CHAR (1ULL << 6)
#define FS_MAKE_DIR (1ULL << 7)
#define FS_MAKE_REG (1ULL << 8)
#define FS_MAKE_SOCK (1ULL << 9)
#define FS_MAKE_FIFO (1ULL << 10)
#define FS_MAKE_BLOCK (1ULL << 11)
#define FS_MAKE_SYM (1ULL << 12)
#define FS_REFER (1ULL << 13)
#define FS_TRUNCATE (1ULL << 14)
#define FS_IOCTL_DEV (1ULL << 15)
#define SCOPE_ABSTRACT_UNIX_SOCKET (1ULL << 0)
#define SCOPE_SIGNAL (1ULL << 1)

struct ruleset_attr {
    uint64_t handled_access_fs;
    uint64_t handled_access_net;
    uint64_t scoped;
};

struct path_beneath_attr {
    uint64_t allowed_access;
    int32_t parent_fd;
} __attribute__((packed));

#define MAX_WRITE 256
#define MAX_READ 2048

struct paths {
    char *items[MAX_READ];
    int count;
};


static int parse_fd(const char *text)
{
    char *end;
    long value;
    errno = 0;
    value = strtol(text, &end, 10);
    if (errno || *end || end == text || value < 0 || value > 65535)
        fail(125, "Can't start the sandbox launcher: bad descriptor %s", text);
    return (int)value;
}

static long landlock_abi(void)
{
    long abi = syscall(SYS_landlock_create_ruleset, NULL, 0, 1U);
    return abi > 0 ? abi : 0;
}

static void status_field(const char *text, const char *key, char *out, size_t size)
{
    size_t klen = strlen(key);
    const char *line = text;
    out[0] = '\0';
    while (line && *line) {
        if (strncmp(line, key, klen) == 0 && line[klen] == ':') {
            const char *v = line + klen + 1;
            size_t i = 0;
            while (*v == ' ' || *v == '\t')
                v++;
            while (v[i] && v[i] != '\n' && i + 1 < size) {
                out[i] = v[i];
                i++;
            }
            out[i] = '\0';
            return;
        }
        line = strchr(line, '\n');
        if (line)
            line++;
    }
}

static void verify_boundary(int allow_unix)
{
    char text[8192], value[64];
    ssize_t n;
    int fd = open("/proc/self/status", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        fail(125, "Refusing to run: can't read /proc/self/status: %s", strerror(errno));
    n = read(fd, text, sizeof text - 1);
    close(fd);
    if (n <= 0)
        fail(125, "Refusing to run: can't read /proc/self/status");
    text[n] = '\0';
    status_field(text, "NoNewPrivs", value, sizeof value);
    if (strcmp(value, "1") != 0)
        fail(125, "Refusing to run: no-new-privileges is not set");
    status_field(text, "Seccomp", value, sizeof value);
    if (strcmp(value, "2") != 0)
        fail(125, "Refusing to run: the seccomp filter is not in effect");
    status_field(text, "CapEff", value, sizeof value);
    if (value[0] == '\0' || strtoull(value, NULL, 16) != 0)
        fail(125, "Refusing to run: the sandbox still holds capabilities");
    /* Probes that must fail.  A success means the filter is not what we built. */
    if (unshare(CLONE_NEWUSER) == 0)
        fail(125, "Refusing to run: creating a user namespace succeeded");
    if (!allow_unix) {
        int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (s >= 0) {
            close(s);
            fail(125, "Refusing to run: creating a unix socket succeeded");
        }
        /* The family with garbage in the upper half, which the kernel drops. */
        s = (int)syscall(SYS_socket, 0x100000000L | AF_UNIX, (long)(SOCK_STREAM | SOCK_CLOEXEC), 0L);
        if (s >= 0) {
            close(s);
            fail(125, "Refusing to run: creating a unix socket succeeded (family 0x100000001)");
        }
        /* Only stream and seqpacket pairs: a datagram one (SOCK_RAW is made one)
         * can sendto(2) any bound socket the sandbox can see. */
        for (int kind = 0; kind <= 0xf; kind++) {
            int pair[2];
            if (kind == SOCK_STREAM || kind == SOCK_SEQPACKET)
                continue;
            if (socketpair(AF_UNIX, kind | SOCK_CLOEXEC, 0, pair) == 0) {
                close(pair[0]);
                close(pair[1]);
                fail(125, "Refusing to run: creating a unix socket pair of type %d succeeded", kind);
            }
        }
    }
    {
        int s = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, 0);
        if (s >= 0) {
            close(s);
            fail(125, "Refusing to run: creating a netlink socket succeeded");
        }
    }
    {
        /* A set-id mode must be refused, on an inode nobody else can see. */
        int m = (int)syscall(SYS_memfd_create, "blastwall-probe", 1U /* MFD_CLOEXEC */);
        if (m < 0)
            fail(125, "Refusing to run: can't create the probe file: %s", strerror(errno));
        if (fchmod(m, 04755) == 0) {
            close(m);
            fail(125, "Refusing to run: setting the setuid bit succeeded");
        }
        close(m);
    }
}

static int listed(const struct paths *list, const char *path)
{
    int i;
    for (i = 0; i < list->count; i++)
        if (strcmp(list->items[i], path) == 0)
            return 1;
    return 0;
}

static void add_rule(int ruleset, int fd, uint64_t allowed, const char *path)
{
    struct path_beneath_attr rule;
    rule.allowed_access = allowed;
    rule.parent_fd = fd;
    if (syscall(SYS_landlock_add_rule, ruleset, 1 /* PATH_BENEATH */, &rule, 0U) < 0)
        fail(125, "Can't apply Landlock: landlock_add_rule(%s): %s", path, strerror(errno));
}

/* Every entry of every parent, but the parents and the excluded ones, gets
 * a read rule; the parents themselves get none, so nothing that appears in
 * them later (a new file, or one renamed over an old one) is readable.  An
 * entry that is a symbolic link gets none either: what it points at is
 * judged where it lies.  A parent missing inside has nothing to allow. */
static void allow_reads(int ruleset, const struct paths *parents, const struct paths *excluded)
{
    char path[PATH_MAX];
    int i;
    for (i = 0; i < parents->count; i++) {
        const char *parent = parents->items[i];
        const char *prefix = strcmp(parent, "/") == 0 ? "" : parent;
        struct dirent *entry;
        DIR *dir;
        int dfd = open(parent, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (dfd < 0) {
            if (errno == ENOENT || errno == ENOTDIR || errno == ELOOP || errno == EACCES)
                continue;
            fail(125, "Can't apply Landlock: Can't open %s: %s", parent, strerror(errno));
        }
        dir = fdopendir(dfd);
        if (!dir)
            fail(125, "Can't apply Landlock: Can't list %s: %s", parent, strerror(errno));
        while ((errno = 0, entry = readdir(dir)) != NULL) {
            struct stat st;
            int fd;
            if (strcmp(entry->d_name, ".") == 0 || strcmp(entry->d_name, "..") == 0)
                continue;
            if (snprintf(path, sizeof path, "%s/%s", prefix, entry->d_name) >= (int)sizeof path)
                fail(125, "Can't apply Landlock: a path in %s is too long", parent);
            if (listed(parents, path) || listed(excluded, path))
                continue;
            fd = openat(dfd, entry->d_name, O_PATH | O_NOFOLLOW | O_CLOEXEC);
            if (fd < 0)
                continue; /* Gone since it was listed: nothing to allow. */
            if (fstat(fd, &st) == 0 && !S_ISLNK(st.st_mode))
                add_rule(ruleset, fd, FS_READ_FILE, path);
            close(fd);
        }
        if (errno)
            fail(125, "Can't apply Landlock: Can't list %s: %s", parent, strerror(errno));
        closedir(dir);
    }
}

static void restrict_fs(char **paths, int count, const struct paths *parents, const struct paths *excluded,
                        long abi)
{
    uint64_t handled = FS_WRITE_FILE | FS_REMOVE_DIR | FS_REMOVE_FILE | FS_MAKE_CHAR | FS_MAKE_DIR |
                       FS_MAKE_REG | FS_MAKE_SOCK | FS_MAKE_FIFO | FS_MAKE_BLOCK | FS_MAKE_SYM;
    struct ruleset_attr attr = {0};
    size_t size = 8;
    int ruleset, i;
    if (abi >= 2)
        handled |= FS_REFER;
    if (abi >= 3)
        handled |= FS_TRUNCATE;
    if (abi >= 5)
        handled |= FS_IOCTL_DEV;
    if (parents->count)
        handled |= FS_READ_FILE;
    attr.handled_access_fs = handled;
    if (abi >= 6) {
        attr.scoped = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL;
        size = 24;
    }
    ruleset = (int)syscall(SYS_landlock_create_ruleset, &attr, size, 0U);
    if (ruleset < 0)
        fail(125, "Can't apply Landlock: landlock_create_ruleset: %s", strerror(errno));
    for (i = 0; i < count; i++) {
        /* Device nodes are never granted; device ioctls only under /dev. */
        uint64_t allowed = handled & ~(FS_MAKE_CHAR | FS_MAKE_BLOCK);
        int fd;
        if (strcmp(paths[i], "/dev") != 0)
            allowed &= ~FS_IOCTL_DEV;
        fd = open(paths[i], O_PATH | O_CLOEXEC | O_DIRECTORY);
        if (fd < 0)
            fail(125, "Can't apply Landlock: Can't open %s for Landlock: %s", paths[i], strerror(errno));
        add_rule(ruleset, fd, allowed, paths[i]);
        close(fd);
    }
    if (parents->count)
        allow_reads(ruleset, parents, excluded);
    if (syscall(SYS_landlock_restrict_self, ruleset, 0U) < 0)
        fail(125, "Can't apply Landlock: landlock_restrict_self: %s", strerror(errno));
    close(ruleset);
}

int main(int argc, char **argv)
{
    char *write_paths[MAX_WRITE];
    static struct paths read_parents, read_excluded;
    int n_write = 0, stderr_fd = -1, ready_fd = -1;
    int require_landlock = 0, allow_unix = 0, ctty = 0;
    char **command = NULL;
    long abi;
    int i;

    for (i = 1; i < argc; i++) {
        const char *arg = argv[i];
        if (strcmp(arg, "--") == 0) {
            command = &argv[i + 1];
            break;
        }
        if (strcmp(arg, "--stderr-fd") == 0 || strcmp(arg, "--ready-fd") == 0 || strcmp(arg, "--write") == 0 ||
            strcmp(arg, "--read-parent") == 0 || strcmp(arg, "--read-exclude") == 0) {
            if (i + 1 >= argc)
                fail(125, "Can't start the sandbox launcher: %s needs a value", arg);
            if (strcmp(arg, "--read-parent") == 0 || strcmp(arg, "--read-exclude") == 0) {
                struct paths *list = arg[7] == 'p' ? &read_parents : &read_excluded;
                if (argv[i + 1][0] != '/')
                    fail(125, "Can't start the sandbox launcher: %s takes an absolute path", arg);
                if (list->count >= MAX_READ)
                    fail(125, "Can't start the sandbox launcher: too many %s paths", arg);
                list->items[list->count++] = argv[i + 1];
            } else if (strcmp(arg, "--write") == 0) {
                if (argv[i + 1][0] != '/')
                    fail(125, "Can't start the sandbox launcher: --write takes an absolute path");
                if (n_write >= MAX_WRITE)
                    fail(125, "Can't start the sandbox launcher: too many --write paths");
                write_paths[n_write++] = argv[i + 1];
            } else if (strcmp(arg, "--stderr-fd") == 0) {
                stderr_fd = parse_fd(argv[i + 1]);
            } else {
                ready_fd = parse_fd(argv[i + 1]);
            }
            i++;
        } else if (strcmp(arg, "--require-landlock") == 0) {
            require_landlock = 1;
        } else if (strcmp(arg, "--allow-unix") == 0) {
            allow_unix = 1;
        } else if (strcmp(arg, "--ctty") == 0) {
            ctty = 1;
        } else {
            fail(125, "Can't start the sandbox launcher: unknown argument '%s'", arg);
        }
    }
    if (!command || !command[0])
        fail(125, "Can't start the sandbox launcher: no command given");

    /* 1. Descriptors. */
    if (stderr_fd >= 0 && dup2(stderr_fd, 2) < 0)
        fail(125, "Can't restore stderr: %s", strerror(errno));
    if (ready_fd >= 3) {
        if (ready_fd > 3)
            syscall(SYS_close_range, 3U, (unsigned)ready_fd - 1, 0U);
        syscall(SYS_close_range, (unsigned)ready_fd + 1, ~0U, 0U);
    } else {
        syscall(SYS_close_range, 3U, ~0U, 0U);
    }

    /* 2. Check the boundary before trusting it. */
    verify_boundary(allow_unix);

    /* 3. Landlock. */
    abi = landlock_abi();
    if (abi)
        restrict_fs(write_paths, n_write, &read_parents, &read_excluded, abi);
    else if (require_landlock)
        fail(125, "Refusing to run: Landlock is required but this kernel does not provide it");

    if (ready_fd >= 0) {
        (void)!write(ready_fd, "1", 1);
        close(ready_fd);
    }

    /* 4. The terminal, then the command. */
    if (ctty) {
        /* bubblewrap's new session belongs to its pid 1; start our own so the
         * private pty can become our controlling terminal. */
        if (getsid(0) != getpid() && setsid() < 0)
            fail(125, "Can't attach the sandbox's terminal: %s", strerror(errno));
        if (ioctl(0, TIOCSCTTY, 0) < 0 || tcsetpgrp(0, getpgrp()) < 0)
            fail(125, "Can't attach the sandbox's terminal: %s", strerror(errno));
    }
    execvp(command[0], command);
    if (errno == ENOENT)
        fail(127, "Can't run '%s': command not found", command[0]);
    fail(126, "Can't run '%s': %s", command[0], strerror(errno));
    return 126;
}
