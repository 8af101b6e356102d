/* printf and friends to the vcoproc's console (picolibc's stdio): stdout
 * and stderr write bytes with coproc_putc; there is no input. Linked by
 * `coproc-fw` unless --nolibc. */
#include <stdio.h>

#include "coproc.h"

static int coproc_stdio_put(char c, FILE *f) {
    (void)f;
    coproc_putc(c);
    return (unsigned char)c;
}

static FILE coproc_stdio = FDEV_SETUP_STREAM(coproc_stdio_put, NULL, NULL, _FDEV_SETUP_WRITE);
FILE *const stdout = &coproc_stdio;
FILE *const stderr = &coproc_stdio;
FILE *const stdin = NULL;
