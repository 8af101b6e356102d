/* coproc firmware start-up: the vector table, the reset handler `_start`,
 * bss clearing, thread-local storage and constructors for the C library,
 * and the default exception handler. See docs/firmware-abi.md. */
#include <stddef.h>
#include <stdint.h>

#include "coproc.h"

extern uint32_t __bss_start[];
extern uint32_t __bss_end[];
extern uint32_t __stack_top[];
extern char __tls_base[];
typedef void (*coproc_ctor)(void);
extern coproc_ctor __preinit_array_start[], __preinit_array_end[];
extern coproc_ctor __init_array_start[], __init_array_end[];

/* The C library's thread pointer (picolibc); absent without libc. */
void _set_tls(void *tls) __attribute__((weak));

int main(void);

uint32_t coproc_notify_seq, coproc_console_seq;

__attribute__((noreturn, used)) void coproc_cstart(void) {
    for (uint32_t *p = __bss_start; p < __bss_end; p++) {
        *p = 0;
    }
    /* .tdata and .tbss were loaded and zeroed in place by the loader. */
    if (_set_tls) {
        _set_tls(__tls_base);
    }
    for (coproc_ctor *f = __preinit_array_start; f < __preinit_array_end; f++) {
        (*f)();
    }
    for (coproc_ctor *f = __init_array_start; f < __init_array_end; f++) {
        (*f)();
    }
    coproc_exit((uint32_t)main());
}

/* The reset handler (also the ELF entry point). */
__attribute__((naked, noreturn, section(".text.start"))) void _start(void) {
    __asm__ volatile("ldr r0, =__stack_top\n"
                     "mov sp, r0\n"
                     "b coproc_cstart\n");
}

/* An exception or interrupt with no handler of the firmware's stops the
 * vcoproc with exit code COPROC_EXIT_UNHANDLED | exception number. */
__attribute__((noreturn)) void coproc_default_handler(void) {
    uint32_t ipsr;
    __asm__ volatile("mrs %0, ipsr" : "=r"(ipsr));
    coproc_exit(COPROC_EXIT_UNHANDLED | (ipsr & 0x1ffu));
}

#define COPROC_WEAK_HANDLER(name) void name(void) __attribute__((weak, alias("coproc_default_handler")))
COPROC_WEAK_HANDLER(NMI_Handler);
COPROC_WEAK_HANDLER(HardFault_Handler);
COPROC_WEAK_HANDLER(MemManage_Handler);
COPROC_WEAK_HANDLER(BusFault_Handler);
COPROC_WEAK_HANDLER(UsageFault_Handler);
COPROC_WEAK_HANDLER(SVC_Handler);
COPROC_WEAK_HANDLER(DebugMon_Handler);
COPROC_WEAK_HANDLER(PendSV_Handler);
COPROC_WEAK_HANDLER(SysTick_Handler);
COPROC_WEAK_HANDLER(Doorbell_IRQHandler);
COPROC_WEAK_HANDLER(Default_IRQHandler);

/* The vector table, at the start of code memory (VTOR resets to 0). */
__attribute__((section(".isr_vector"), used)) void (*const coproc_vectors[16 + COPROC_NVIC_IRQS])(void) = {
    (void (*)(void))__stack_top,
    _start,
    NMI_Handler,
    HardFault_Handler,
    MemManage_Handler,
    BusFault_Handler,
    UsageFault_Handler,
    0,
    0,
    0,
    0,
    SVC_Handler,
    DebugMon_Handler,
    0,
    PendSV_Handler,
    SysTick_Handler,
    [16 + COPROC_IRQ_DOORBELL] = Doorbell_IRQHandler,
    [16 + COPROC_IRQ_DOORBELL + 1 ... 16 + COPROC_NVIC_IRQS - 1] = Default_IRQHandler,
};
