/* A domain in C: the CRC-32 of a file (or of a built-in message) on a
 * vcoproc running the crc32 example firmware, checked on the host.
 *
 *   cc offload.c $(pkg-config --cflags --libs coproc) -o offload
 *   ./offload crc32.elf [FILE]
 *
 * The daemon's socket: $COPROC_SOCKET, else the default. Offloading the
 * job takes four calls: coproc_open, coproc_load, coproc_buffer_from,
 * coproc_call. */
#include <coproc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static unsigned char *slurp(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        perror(path);
        exit(2);
    }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *p = malloc(n > 0 ? (size_t)n : 1);
    if (!p || fread(p, 1, (size_t)n, f) != (size_t)n) {
        fprintf(stderr, "%s: read failed\n", path);
        exit(2);
    }
    fclose(f);
    *len = (size_t)n;
    return p;
}

/* CRC-32 (IEEE), bit by bit: the host's own reference. */
static uint32_t crc32_host(const unsigned char *p, size_t n) {
    uint32_t c = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; i++) {
        c ^= p[i];
        for (int k = 0; k < 8; k++) {
            c = (c >> 1) ^ (0xEDB88320u & (0u - (c & 1u)));
        }
    }
    return ~c;
}

static int fail(const char *what) {
    fprintf(stderr, "%s: %s (%d)\n", what, coproc_last_error(), coproc_last_error_code());
    return 1;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s crc32.elf [FILE]\n", argv[0]);
        return 2;
    }
    size_t elf_len, len;
    unsigned char *elf = slurp(argv[1], &elf_len);
    static const char message[] = "The quick brown fox jumps over the lazy dog";
    unsigned char *data = argc > 2 ? slurp(argv[2], &len) : (unsigned char *)message;
    if (argc <= 2) {
        len = sizeof message - 1;
    }

    coproc_vcoproc *v = coproc_open(NULL, "mcu0");                       /* 1 */
    if (!v) {
        return fail("open");
    }
    if (coproc_load(v, "crc32", elf, elf_len) != COPROC_OK) {            /* 2 */
        return fail("load");
    }
    coproc_buffer *b = coproc_buffer_from(v, data, len);                 /* 3 */
    if (!b) {
        return fail("buffer");
    }
    uint32_t request[3] = {(uint32_t)coproc_buffer_iova(b), (uint32_t)len, 1};
    uint32_t reply[16];
    if (coproc_call(v, request, 3, reply, 16, 0) < 0) {                  /* 4 */
        return fail("call");
    }
    uint32_t host = crc32_host(data, len);
    printf("crc32 of %zu bytes: device %#010x, host %#010x\n", len, reply[1], host);
    coproc_buffer_free(b);
    coproc_close(v);
    free(elf);
    return reply[1] == host ? 0 : 1;
}
