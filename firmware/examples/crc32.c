/* crc32: CRC-32 (IEEE 802.3, reflected, poly 0xEDB88320) of a mapped buffer.
 * mailbox in:  [0] iova, [1] length in bytes, [2] tag
 * mailbox out: [0] status (0 ok), [1] crc, [2] tag; then notify(tag). */
#include "coproc.h"

static uint32_t table[256];

static void make_table(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) {
            c = (c & 1u) ? (0xEDB88320u ^ (c >> 1)) : (c >> 1);
        }
        table[i] = c;
    }
}

int main(void) {
    make_table();
    for (;;) {
        coproc_wait_doorbell();
        const volatile uint8_t *p = (const volatile uint8_t *)coproc_mbox_in(0);
        uint32_t len = coproc_mbox_in(1);
        uint32_t tag = coproc_mbox_in(2);
        uint32_t crc = 0xFFFFFFFFu;
        for (uint32_t i = 0; i < len; i++) {
            crc = table[(crc ^ p[i]) & 0xFFu] ^ (crc >> 8);
        }
        coproc_mbox_out(0, 0);
        coproc_mbox_out(1, crc ^ 0xFFFFFFFFu);
        coproc_mbox_out(2, tag);
        coproc_notify(tag);
    }
}
