/* fft: in-place radix-2 complex FFT in single precision on the FPU, with
 * twiddle factors from libm (sinf, cosf).
 * X[k] = sum_n x[n] e^{-2 pi i k n / N}.
 * mailbox in:  [0] buffer iova (N complex values as interleaved float re, im),
 *              [1] N (a power of two, 2..COPROC_FFT_MAX), [2] tag
 * mailbox out: [0] status (0 ok, 1 bad N), [1] N, [2] tag,
 *              [3] the float bits of sqrtf(sum |X[k]|^2 / N) (the signal's
 *              root-sum-square, by Parseval); then notify(tag). */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "coproc.h"

#define COPROC_FFT_MAX 4096u

static float tw_re[COPROC_FFT_MAX / 2];
static float tw_im[COPROC_FFT_MAX / 2];

static void fft(float *x, uint32_t n) {
    /* bit-reversal permutation */
    for (uint32_t i = 1, j = 0; i < n; i++) {
        uint32_t bit = n >> 1;
        for (; j & bit; bit >>= 1) {
            j ^= bit;
        }
        j ^= bit;
        if (i < j) {
            float t0 = x[2 * i], t1 = x[2 * i + 1];
            x[2 * i] = x[2 * j];
            x[2 * i + 1] = x[2 * j + 1];
            x[2 * j] = t0;
            x[2 * j + 1] = t1;
        }
    }
    const float pi = 3.14159265358979f;
    for (uint32_t k = 0; k < n / 2; k++) {
        float a = -2.0f * pi * (float)k / (float)n;
        tw_re[k] = cosf(a);
        tw_im[k] = sinf(a);
    }
    for (uint32_t len = 2; len <= n; len <<= 1) {
        uint32_t step = n / len;
        for (uint32_t i = 0; i < n; i += len) {
            for (uint32_t k = 0; k < len / 2; k++) {
                float wr = tw_re[k * step], wi = tw_im[k * step];
                float *u = &x[2 * (i + k)];
                float *v = &x[2 * (i + k + len / 2)];
                float vr = v[0] * wr - v[1] * wi;
                float vi = v[0] * wi + v[1] * wr;
                v[0] = u[0] - vr;
                v[1] = u[1] - vi;
                u[0] += vr;
                u[1] += vi;
            }
        }
    }
}

int main(void) {
    for (;;) {
        coproc_wait_doorbell();
        float *x = (float *)coproc_mbox_in(0);
        uint32_t n = coproc_mbox_in(1);
        uint32_t tag = coproc_mbox_in(2);
        if (n < 2 || n > COPROC_FFT_MAX || (n & (n - 1)) != 0) {
            coproc_mbox_out(0, 1);
        } else {
            fft(x, n);
            float e = 0.0f;
            for (uint32_t k = 0; k < n; k++) {
                e += x[2 * k] * x[2 * k] + x[2 * k + 1] * x[2 * k + 1];
            }
            float rss = sqrtf(e / (float)n);
            uint32_t bits;
            memcpy(&bits, &rss, sizeof bits);
            coproc_mbox_out(0, 0);
            coproc_mbox_out(3, bits);
        }
        coproc_mbox_out(1, n);
        coproc_mbox_out(2, tag);
        coproc_notify(tag);
    }
}
