/* fir: Q15 FIR filter over mapped buffers.
 * y[n] = sat16((sum_{k<ntaps} h[k] * x[n-k] + 2^14) >> 15), x[i<0] = 0.
 * mailbox in:  [0] input iova (int16), [1] output iova (int16),
 *              [2] samples, [3] taps iova (int16), [4] ntaps (1..COPROC_FIR_MAX_TAPS), [5] tag
 * mailbox out: [0] status (0 ok, 1 bad arguments), [1] samples done, [2] tag;
 *              then notify(tag). */
#include "coproc.h"

#define COPROC_FIR_MAX_TAPS 256u

static int16_t taps[COPROC_FIR_MAX_TAPS];

static int16_t sat16(int64_t v) {
    if (v > 32767) {
        return 32767;
    }
    if (v < -32768) {
        return -32768;
    }
    return (int16_t)v;
}

int main(void) {
    for (;;) {
        coproc_wait_doorbell();
        const int16_t *x = (const int16_t *)coproc_mbox_in(0);
        int16_t *y = (int16_t *)coproc_mbox_in(1);
        uint32_t n = coproc_mbox_in(2);
        const int16_t *h = (const int16_t *)coproc_mbox_in(3);
        uint32_t ntaps = coproc_mbox_in(4);
        uint32_t tag = coproc_mbox_in(5);
        if (ntaps == 0 || ntaps > COPROC_FIR_MAX_TAPS) {
            coproc_mbox_out(0, 1);
            coproc_mbox_out(1, 0);
            coproc_mbox_out(2, tag);
            coproc_notify(tag);
            continue;
        }
        for (uint32_t k = 0; k < ntaps; k++) {
            taps[k] = h[k];
        }
        for (uint32_t i = 0; i < n; i++) {
            int64_t acc = 0;
            uint32_t kmax = i + 1 < ntaps ? i + 1 : ntaps;
            for (uint32_t k = 0; k < kmax; k++) {
                acc += (int32_t)taps[k] * (int32_t)x[i - k];
            }
            y[i] = sat16((acc + (1 << 14)) >> 15);
        }
        coproc_mbox_out(0, 0);
        coproc_mbox_out(1, n);
        coproc_mbox_out(2, tag);
        coproc_notify(tag);
    }
}
