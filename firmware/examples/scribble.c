/* scribble: uses a mapped buffer forever, for revoke tests and benchmarks.
 * mailbox in:  [0] iova, [1] length in bytes (a multiple of 4, >= 4);
 *              both read again at the start of every pass.
 * Each pass n (from 1): read word 0, then fold words 1.. into a checksum
 * (c = (c ^ w) * 16777619, from 2166136261; word 0, the counter, is left
 * out), then write n into word 0 of the buffer.
 * mailbox out: [1] checksum of the pass, [2] word 0 as read, then [0] n.
 * It never waits: after a revoke its next access to the buffer faults. */
#include "coproc.h"

int main(void) {
    uint32_t n = 0;
    for (;;) {
        volatile uint32_t *p = (volatile uint32_t *)coproc_mbox_in(0);
        uint32_t words = coproc_mbox_in(1) / 4u;
        if (words == 0) {
            continue;
        }
        uint32_t first = p[0];
        uint32_t c = 2166136261u;
        for (uint32_t i = 1; i < words; i++) {
            c = (c ^ p[i]) * 16777619u;
        }
        n++;
        coproc_mbox_out(1, c);
        coproc_mbox_out(2, first);
        coproc_mbox_out(0, n);
        p[0] = n;
    }
}
