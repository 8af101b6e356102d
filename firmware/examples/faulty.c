/* faulty: on the first doorbell, sums a few words of its own data, then
 * reads from COPROC_FAULTY_ADDR, an iova no domain maps. The read faults the
 * vcoproc; nothing after it runs. */
#include "coproc.h"

#define COPROC_FAULTY_ADDR (COPROC_IOVA_BASE + COPROC_IOVA_SIZE - 0x1000u)

static uint32_t scratch[16];

int main(void) {
    coproc_wait_doorbell();
    uint32_t sum = 0;
    for (uint32_t i = 0; i < 16; i++) {
        scratch[i] = i * 3u;
        sum += scratch[i];
    }
    coproc_mbox_out(0, sum);
    sum += *(volatile uint32_t *)COPROC_FAULTY_ADDR;
    coproc_mbox_out(1, sum);
    coproc_notify(1);
    return 0;
}
