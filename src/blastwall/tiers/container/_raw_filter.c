/*
 * HAZMAT: installs a seccomp program inside a gVisor sandbox, then execs the command.
 *
 * gVisor applies the OCI spec's seccomp profile to the processes `runsc run`
 * starts, but not to those `runsc exec` starts (releases before 2026), and
 * every command of a container session is a `runsc exec`.  So each of them is
 * started through this program, bound read-only into the sandbox: it sets
 * no-new-privileges, installs the BPF program the tier compiled for the plan
 * (the same rules as the OCI profile), checks that a forbidden call now fails,
 * and execs the command.  It is linked statically: it must run in any image.
 *
 * Misuse looks like: exec'ing when the program could not be read or
 * installed, or skipping the check.  Exit status 125 means it refused;
 * messages start with "blastwall: ".
 *
 * Usage: blastwall-filter PROGRAM -- COMMAND [ARG]...
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "../_raw_fail.h"

#define MAX_PROGRAM (1 << 20)


int main(int argc, char **argv)
{
    static unsigned char program[MAX_PROGRAM];
    struct sock_fprog prog;
    size_t total = 0;
    ssize_t n;
    int fd, probe;

    if (argc < 4 || strcmp(argv[2], "--") != 0)
        fail(125, "Can't start the command: usage: blastwall-filter PROGRAM -- COMMAND [ARG]...");
    fd = open(argv[1], O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        fail(125, "Can't read the seccomp program %s: %s", argv[1], strerror(errno));
    while ((n = read(fd, program + total, sizeof program - total)) > 0)
        total += (size_t)n;
    if (n < 0)
        fail(125, "Can't read the seccomp program %s: %s", argv[1], strerror(errno));
    close(fd);
    if (total == 0 || total % sizeof(struct sock_filter) != 0 || total == sizeof program)
        fail(125, "Refusing to run: %s is not a seccomp program (%zu bytes)", argv[1], total);
    prog.len = (unsigned short)(total / sizeof(struct sock_filter));
    prog.filter = (struct sock_filter *)program;

    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
        fail(125, "Can't set no-new-privileges: %s", strerror(errno));
    if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog, 0, 0) != 0)
        fail(125, "Can't install the seccomp program: %s", strerror(errno));

    /* Check that it took: a setuid mode on an inode nobody else can see must be refused. */
    probe = (int)syscall(SYS_memfd_create, "blastwall-probe", 1U /* MFD_CLOEXEC */);
    if (probe < 0)
        fail(125, "Refusing to run: can't create the probe file: %s", strerror(errno));
    if (fchmod(probe, 04755) == 0 || errno != EPERM)
        fail(125, "Refusing to run: the seccomp program is not in effect");
    close(probe);

    execvp(argv[3], &argv[3]);
    if (errno == ENOENT)
        fail(127, "Can't run '%s': command not found", argv[3]);
    fail(126, "Can't run '%s': %s", argv[3], strerror(errno));
    return 126;
}
