/* irq: interrupt-driven firmware with the standard start-up a Cortex-M4F
 * part runs: enables the FPU in CPACR, programs SysTick for a tick every
 * 1 ms of the vcoproc's run time, enables the doorbell interrupt
 * (IRQ COPROC_IRQ_DOORBELL) and sleeps in WFI. Requests are handled in the
 * doorbell's handler, taken through the vector table:
 * mailbox in:  [0] op, [1] a, [2] b, [3] tag
 *   op 1: answer a + b (added as floats, in the handler);
 *   op 2: let main busy-loop on the FPU until the SysTick count has grown
 *         by a ticks, then answer the count;
 *   op 3: let main make an SVC with a in r0; the SVC handler rewrites the
 *         stacked r0 to 2a + 1, which main answers;
 *   op 4: main sleeps with WFE instead of WFI from now on if a != 0;
 *         answers a;
 *   op 5: like op 2, but the handler answers at once (result 0) and main
 *         answers op 5 with the count when done, so requests can arrive
 *         (and are handled) while main is busy;
 * mailbox out: [0] op, [1] result (0xffffffff for an unknown op), [2] CPUID,
 *              [3] SysTick count, [4] doorbell handler entries, [5] IPSR
 *              where the answer was made, [6] VTOR; then notify(tag). */
#include <stdint.h>

#include "coproc.h"

static volatile uint32_t ticks;
static volatile uint32_t entries;
static volatile uint32_t wait_for;
static volatile uint32_t wait_tag;
static volatile float sink;
static volatile uint32_t svc_arg;
static volatile uint32_t svc_tag;
static volatile uint32_t use_wfe;
static volatile uint32_t wait_op;

/* SVCall: the stacked frame is on the main stack; r0 is its first word. */
__attribute__((used)) void svc_main(uint32_t *frame) {
    frame[0] = frame[0] * 2u + 1u;
}

__attribute__((naked)) void SVC_Handler(void) {
    __asm__ volatile("mrs r0, msp\n"
                     "b svc_main\n");
}

static uint32_t svc_call(uint32_t x) {
    register uint32_t r0 __asm__("r0") = x;
    __asm__ volatile("svc #0" : "+r"(r0)::"memory");
    return r0;
}

void SysTick_Handler(void) {
    ticks = ticks + 1;
}

static void answer(uint32_t op, uint32_t result, uint32_t tag) {
    uint32_t ipsr;
    __asm__ volatile("mrs %0, ipsr" : "=r"(ipsr));
    coproc_mbox_out(0, op);
    coproc_mbox_out(1, result);
    coproc_mbox_out(2, COPROC_SCS(COPROC_SCB_CPUID));
    coproc_mbox_out(3, ticks);
    coproc_mbox_out(4, entries);
    coproc_mbox_out(5, ipsr);
    coproc_mbox_out(6, COPROC_SCS(COPROC_SCB_VTOR));
    coproc_notify(tag);
}

void Doorbell_IRQHandler(void) {
    entries = entries + 1;
    /* Acknowledge everything rung so far: the line drops. */
    COPROC_REG(COPROC_CB_DOORBELL_ACK) = COPROC_REG(COPROC_CB_DOORBELL);
    uint32_t op = coproc_mbox_in(0);
    uint32_t tag = coproc_mbox_in(3);
    if (op == 1) {
        /* float arithmetic in the handler: the FP context is stacked */
        float a = (float)coproc_mbox_in(1), b = (float)coproc_mbox_in(2);
        answer(op, (uint32_t)(a + b), tag);
    } else if (op == 2 || op == 5) {
        wait_tag = tag;
        wait_op = op;
        wait_for = ticks + coproc_mbox_in(1);
        if (op == 5) {
            answer(op, 0, tag);
        }
    } else if (op == 3) {
        svc_arg = coproc_mbox_in(1);
        svc_tag = tag;
    } else if (op == 4) {
        use_wfe = coproc_mbox_in(1);
        answer(op, use_wfe, tag);
    } else {
        answer(op, 0xffffffffu, tag);
    }
}

int main(void) {
    /* CMSIS SystemInit: full access to CP10 and CP11 (the FPU) */
    COPROC_SCS(COPROC_SCB_CPACR) |= 0xfu << 20;
    __asm__ volatile("dsb\nisb" ::: "memory");
    COPROC_SCS(COPROC_SYST_RVR) = COPROC_SYSTICK_HZ / 1000u - 1u;
    COPROC_SCS(COPROC_SYST_CVR) = 0;
    COPROC_SCS(COPROC_SYST_CSR) = 7u; /* enable, interrupt, core clock */
    coproc_irq_enable(COPROC_IRQ_DOORBELL);
    coproc_irq_on();
    float acc = 0.0f;
    for (;;) {
        uint32_t goal = wait_for;
        if (svc_tag != 0) {
            uint32_t tag = svc_tag;
            svc_tag = 0;
            answer(3, svc_call(svc_arg), tag);
        } else if (goal != 0) {
            /* busy: FP work in thread mode, interrupted by SysTick */
            while ((int32_t)(ticks - goal) < 0) {
                acc = acc * 0.5f + 1.0f;
            }
            wait_for = 0;
            sink = acc;
            answer(wait_op, ticks, wait_tag);
        } else {
            /* Sleep with interrupts masked, so a request that arrives
             * between the checks above and the sleep is not slept through:
             * WFI (and WFE here) returns at once on a pending interrupt
             * even while PRIMASK masks it, and cpsie takes it. */
            coproc_irq_off();
            if (wait_for == 0 && svc_tag == 0) {
                if (use_wfe) {
                    __asm__ volatile("wfe" ::: "memory");
                } else {
                    coproc_wfi();
                }
            }
            coproc_irq_on();
        }
    }
}
