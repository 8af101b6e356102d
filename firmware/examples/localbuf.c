/* localbuf: uses device-local memory (allocated by the domain with
 * alloc-local, visible to this vcoproc only) as a scratch buffer.
 * mailbox in:  [0] op: 1 fill then sum, 2 sum only; [1] address of the
 *              local memory; [2] words; [3] seed
 * fill writes word i = seed * 2654435761 + i * 40503 (wrapping).
 * mailbox out: [0] op, [1] wrapping sum of the words read back; then
 *              notify(op). */
#include "coproc.h"

int main(void) {
    for (;;) {
        coproc_wait_doorbell();
        uint32_t op = coproc_mbox_in(0);
        volatile uint32_t *buf = (volatile uint32_t *)coproc_mbox_in(1);
        uint32_t words = coproc_mbox_in(2);
        uint32_t seed = coproc_mbox_in(3);
        if (op == 1u) {
            for (uint32_t i = 0; i < words; i++) {
                buf[i] = seed * 2654435761u + i * 40503u;
            }
        }
        uint32_t sum = 0;
        for (uint32_t i = 0; i < words; i++) {
            sum += buf[i];
        }
        coproc_mbox_out(0, op);
        coproc_mbox_out(1, sum);
        coproc_notify(op);
    }
}
