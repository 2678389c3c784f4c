/*
 * HAZMAT: the one way the tiers' C helpers refuse: a "blastwall: " message on
 * fd 2, written with one write(2) and no allocation, then _exit(status).
 * Included by _raw_enter.c (process) and _raw_filter.c (container); both run
 * where nothing else may be trusted, before the user's command.
 */
#ifndef BLASTWALL_RAW_FAIL_H
#define BLASTWALL_RAW_FAIL_H

#include <stdarg.h>
#include <stdio.h>
#include <unistd.h>

__attribute__((format(printf, 2, 3), noreturn))
static void fail(int status, const char *fmt, ...)
{
    char buf[1024];
    va_list ap;
    int n = snprintf(buf, sizeof buf, "blastwall: ");
    va_start(ap, fmt);
    n += vsnprintf(buf + n, sizeof buf - n - 1, fmt, ap);
    va_end(ap);
    if (n > (int)sizeof buf - 2)
        n = sizeof buf - 2;
    buf[n++] = '\n';
    (void)!write(2, buf, n);
    _exit(status);
}

#endif
