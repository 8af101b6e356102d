/* pager: on each doorbell, reads the first word of each of a sequence of
 * pages and sums them (wrapping), so that with demand faults every page not
 * yet mapped is one page-fault round trip.
 * mailbox in:  [0] iova of the first page, [1] number of pages,
 *              [2] stride in bytes (0: 4096)
 * mailbox out: [0] the sum, [1] pages read; then notify(job count). */
#include "coproc.h"

int main(void) {
    uint32_t jobs = 0;
    for (;;) {
        coproc_wait_doorbell();
        uint32_t base = coproc_mbox_in(0);
        uint32_t n = coproc_mbox_in(1);
        uint32_t stride = coproc_mbox_in(2);
        if (stride == 0) {
            stride = 4096;
        }
        uint32_t sum = 0;
        uint32_t i = 0;
        for (; i < n; i++) {
            sum += *(volatile uint32_t *)(base + i * stride);
        }
        jobs++;
        coproc_mbox_out(0, sum);
        coproc_mbox_out(1, i);
        coproc_notify(jobs);
    }
}
