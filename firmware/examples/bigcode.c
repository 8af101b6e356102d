/* bigcode: a firmware with 384 KiB of read-only tables (more than the
 * 256 KiB of code memory the mcu class used to have), as a complete set of
 * precomputed DSP tables makes. Every doorbell: mailbox in [0] = i; answers
 * [0] table[i % COPROC_BIG_WORDS], [1] the sum of the whole table, [2] the
 * table's last word's address; notify(i). The table is zero except
 * table[k * 4096] = k + 1 for k < 24. */
#include "coproc.h"

#define COPROC_BIG_WORDS (96u * 1024u)

#define E(k) [(k) * 4096] = (k) + 1
static const uint32_t table[COPROC_BIG_WORDS] = {
    E(0),  E(1),  E(2),  E(3),  E(4),  E(5),  E(6),  E(7),  E(8),  E(9),  E(10), E(11),
    E(12), E(13), E(14), E(15), E(16), E(17), E(18), E(19), E(20), E(21), E(22), E(23),
};

int main(void) {
    for (;;) {
        coproc_wait_doorbell();
        uint32_t i = coproc_mbox_in(0);
        const volatile uint32_t *t = table;
        uint32_t sum = 0;
        for (uint32_t k = 0; k < COPROC_BIG_WORDS; k++) {
            sum += t[k];
        }
        coproc_mbox_out(0, t[i % COPROC_BIG_WORDS]);
        coproc_mbox_out(1, sum);
        coproc_mbox_out(2, (uint32_t)(uintptr_t)&table[COPROC_BIG_WORDS - 1]);
        coproc_notify(i);
    }
}
