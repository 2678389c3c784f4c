/* statx without AT_NO_AUTOMOUNT: a compatibility layer preloaded into every process of a blastwall image.
 *
 * gVisor releases of 2022 (Debian 12's runsc) answer EINVAL to a statx() whose flags hold AT_NO_AUTOMOUNT,
 * which the coreutils of those years pass for `ls -l`, `stat` and friends.  Neither gVisor nor the VM tier's
 * guest has automount points, so the flag changes nothing there: it is cleared, and everything else is
 * passed to the kernel unchanged.  Only glibc's statx() wrapper is replaced; the syscall itself is not
 * filtered or emulated.  Built by `blastwall image build` (images.py), listed in the image's
 * /etc/ld.so.preload; it depends on nothing but syscall(2).
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

int statx(int dirfd, const char *restrict path, int flags, unsigned int mask, struct statx *restrict buf)
{
    return (int)syscall(SYS_statx, dirfd, path, flags & ~AT_NO_AUTOMOUNT, mask, buf);
}
