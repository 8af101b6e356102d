/* echo: every doorbell copies mailbox-in words 0..14 to mailbox-out and puts
 * a running message count in word 15, then notifies the domain. */
#include "coproc.h"

int main(void) {
    uint32_t seq = 0;
    for (;;) {
        coproc_wait_doorbell();
        seq++;
        for (uint32_t i = 0; i + 1 < COPROC_MBOX_WORDS; i++) {
            coproc_mbox_out(i, coproc_mbox_in(i));
        }
        coproc_mbox_out(COPROC_MBOX_WORDS - 1, seq);
        coproc_notify(seq);
    }
}
