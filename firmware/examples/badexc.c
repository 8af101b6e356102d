/* badexc (test firmware): exception set-ups the mcu class refuses, one per
 * doorbell; each must fault this vcoproc only.
 * mailbox in [0] op:
 *   1: move SP to 16 bytes above the bottom of data memory and pend PendSV:
 *      the exception frame does not fit (a stack overflow on entry);
 *   2: pend PendSV whose handler returns with EXC_RETURN 0xFFFFFFFD (to the
 *      process stack, which is not modelled);
 *   3: switch thread mode to the process stack (CONTROL.SPSEL) and pend
 *      PendSV;
 *   4: pend PendSV normally: the handler returns properly, answer 4.
 * mailbox out: [0] op (only op 4 gets there); notify(op). */
#include "coproc.h"

static volatile uint32_t mode;

__attribute__((naked)) void PendSV_Handler(void) {
    __asm__ volatile("ldr r0, =mode\n"
                     "ldr r0, [r0]\n"
                     "cmp r0, #2\n"
                     "bne 1f\n"
                     "mvn r0, #2\n" /* 0xFFFFFFFD */
                     "bx r0\n"
                     "1: bx lr\n");
}

static void pend_pendsv(void) {
    COPROC_SCS(COPROC_SCB_ICSR) = 1u << 28;
    __asm__ volatile("dsb\nisb" ::: "memory");
}

int main(void) {
    for (;;) {
        coproc_wait_doorbell();
        uint32_t op = coproc_mbox_in(0);
        mode = op;
        if (op == 1) {
            __asm__ volatile("mov sp, %0" ::"r"(COPROC_DATA_BASE + 16u) : "memory");
            pend_pendsv();
        } else if (op == 2) {
            pend_pendsv();
        } else if (op == 3) {
            uint32_t top = COPROC_DATA_BASE + 0x1000u;
            __asm__ volatile("msr psp, %0\n"
                             "mov r0, #2\n"
                             "msr control, r0\n"
                             "isb\n" ::"r"(top)
                             : "r0", "memory");
            pend_pendsv();
        } else if (op == 4) {
            pend_pendsv();
        }
        coproc_mbox_out(0, op);
        coproc_notify(op);
    }
}
