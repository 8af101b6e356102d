/* hello: the C library at work. Every doorbell: mailbox in [0] = n
 * (1..65536); allocates n words with malloc (a heap in data memory), fills
 * a[i] = i*i, sums them, prints "hello: n=<n> sum=<sum> root=<sqrt(sum)
 * to 3 decimals> decay=<expf(-n / 65536) to 3 decimals>" with printf to
 * the console, and answers
 * mailbox out [0] status (0 ok, 1 bad n, 2 out of memory), [1] the sum's low
 * word, [2] its high word, [3] where the heap block was; then
 * notify(n). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coproc.h"

int main(void) {
    printf("hello: ready\n");
    for (;;) {
        coproc_wait_doorbell();
        uint32_t n = coproc_mbox_in(0);
        uint32_t status = 0;
        uint64_t sum = 0;
        uint32_t *a = NULL;
        if (n == 0 || n > 65536u) {
            status = 1;
        } else if ((a = malloc(n * sizeof *a)) == NULL) {
            status = 2;
        } else {
            memset(a, 0xff, n * sizeof *a);
            for (uint32_t i = 0; i < n; i++) {
                a[i] = i * i;
            }
            for (uint32_t i = 0; i < n; i++) {
                sum += a[i];
            }
            printf("hello: n=%lu sum=%llu root=%.3f decay=%.3f\n", (unsigned long)n,
                   (unsigned long long)sum, sqrt((double)sum),
                   (double)expf(-(float)n / 65536.0f));
        }
        coproc_mbox_out(0, status);
        coproc_mbox_out(1, (uint32_t)sum);
        coproc_mbox_out(2, (uint32_t)(sum >> 32));
        coproc_mbox_out(3, (uint32_t)(uintptr_t)a);
        free(a);
        coproc_notify(n);
    }
}
