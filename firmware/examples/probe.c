/* probe (test firmware): performs one memory operation per doorbell, so
 * tests can aim accesses at any address.
 * mailbox in:  [0] op (1 read, 2 write, 3 call/fetch, 4 undefined instruction,
 *              5 exit with code [2]), [1] address, [2] value
 * mailbox out: [0] op, [1] value read; then notify(op). */
#include "coproc.h"

int main(void) {
    for (;;) {
        coproc_wait_doorbell();
        uint32_t op = coproc_mbox_in(0);
        uint32_t addr = coproc_mbox_in(1);
        uint32_t val = coproc_mbox_in(2);
        uint32_t out = 0;
        switch (op) {
        case 1:
            out = *(volatile uint32_t *)addr;
            break;
        case 2:
            *(volatile uint32_t *)addr = val;
            break;
        case 3:
            ((void (*)(void))(addr | 1u))();
            break;
        case 4:
            __asm__ volatile("udf #0");
            break;
        case 5:
            coproc_exit(val);
        default:
            break;
        }
        coproc_mbox_out(0, op);
        coproc_mbox_out(1, out);
        coproc_notify(op);
    }
}
