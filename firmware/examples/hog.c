/* hog: computes forever and never waits. Every 2^16 iterations it publishes
 * its progress (iterations / 2^16) in mailbox-out word 0 and the current
 * LCG state in word 1. */
#include "coproc.h"

int main(void) {
    uint32_t x = 1;
    uint32_t n = 0;
    for (;;) {
        x = x * 1664525u + 1013904223u;
        n++;
        if ((n & 0xFFFFu) == 0) {
            coproc_mbox_out(0, n >> 16);
            coproc_mbox_out(1, x);
        }
    }
}
