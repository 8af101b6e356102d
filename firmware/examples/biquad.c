/* biquad: a second-order IIR low-pass filter (the RBJ audio EQ cookbook's
 * LPF) in single precision, coefficients computed with libm:
 *   w0 = 2 pi f0 / fs, alpha = sin(w0) / (2 Q),
 *   b0 = b2 = (1 - cos w0) / 2, b1 = 1 - cos w0,
 *   a0 = 1 + alpha, a1 = -2 cos w0, a2 = 1 - alpha,
 *   y[n] = (b0 x[n] + b1 x[n-1] + b2 x[n-2] - a1 y[n-1] - a2 y[n-2]) / a0,
 *   x[i<0] = y[i<0] = 0.
 * mailbox in:  [0] input iova (float), [1] output iova (float), [2] samples,
 *              [3] f0 / fs as float bits (0 < f0/fs < 0.5), [4] Q as float
 *              bits (> 0), [5] tag
 * mailbox out: [0] status (0 ok, 1 bad arguments), [1] samples, [2] tag;
 *              then notify(tag). */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "coproc.h"

static float as_float(uint32_t w) {
    float f;
    memcpy(&f, &w, sizeof f);
    return f;
}

int main(void) {
    for (;;) {
        coproc_wait_doorbell();
        const float *x = (const float *)coproc_mbox_in(0);
        float *y = (float *)coproc_mbox_in(1);
        uint32_t n = coproc_mbox_in(2);
        float f = as_float(coproc_mbox_in(3));
        float q = as_float(coproc_mbox_in(4));
        uint32_t tag = coproc_mbox_in(5);
        if (!(f > 0.0f && f < 0.5f && q > 0.0f && isfinite(q))) {
            coproc_mbox_out(0, 1);
            coproc_mbox_out(1, 0);
        } else {
            float w0 = 2.0f * 3.14159265358979f * f;
            float c = cosf(w0), alpha = sinf(w0) / (2.0f * q);
            float a0 = 1.0f + alpha;
            float b0 = (1.0f - c) / 2.0f / a0, b1 = (1.0f - c) / a0, b2 = b0;
            float a1 = -2.0f * c / a0, a2 = (1.0f - alpha) / a0;
            float x1 = 0, x2 = 0, y1 = 0, y2 = 0;
            for (uint32_t i = 0; i < n; i++) {
                float xi = x[i];
                float yi = b0 * xi + b1 * x1 + b2 * x2 - a1 * y1 - a2 * y2;
                x2 = x1;
                x1 = xi;
                y2 = y1;
                y1 = yi;
                y[i] = yi;
            }
            coproc_mbox_out(0, 0);
            coproc_mbox_out(1, n);
        }
        coproc_mbox_out(2, tag);
        coproc_notify(tag);
    }
}
