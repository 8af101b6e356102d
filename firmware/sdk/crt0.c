/* coproc firmware runtime: entry point, bss clearing, and the few libc
 * routines the compiler may call on its own. */
#include <stddef.h>
#include <stdint.h>

#include "coproc.h"

extern uint32_t __bss_start[];
extern uint32_t __bss_end[];
extern uint32_t __stack_top[];

int main(void);

__attribute__((noreturn, used)) void coproc_cstart(void) {
    for (uint32_t *p = __bss_start; p < __bss_end; p++) {
        *p = 0;
    }
    coproc_exit((uint32_t)main());
}

__attribute__((naked, noreturn, section(".text.start"))) void _start(void) {
    __asm__ volatile("ldr r0, =__stack_top\n"
                     "mov sp, r0\n"
                     "b coproc_cstart\n");
}

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
