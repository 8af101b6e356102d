/* For firmware linked without a C library (`coproc-fw --nolibc`): the two
 * routines the compiler may call on its own. */
#include <stddef.h>

void *memset(void *dst, int c, size_t n) {
    /* volatile: keeps the compiler from turning the loop into a memset call */
    volatile unsigned char *d = dst;
    while (n--) {
        *d++ = (unsigned char)c;
    }
    return dst;
}

void *memcpy(void *dst, const void *src, size_t n) {
    volatile unsigned char *d = dst;
    const unsigned char *s = src;
    while (n--) {
        *d++ = *s++;
    }
    return dst;
}
