/* libcoproc's C tests, against a running coprocd (crates/coproc-cli/tests/capi.rs
 * starts a private one, builds this file with cc and runs it):
 *   test_coproc SOCKET FIRMWARE_DIR
 * FIRMWARE_DIR holds crc32.elf, qecho.elf and faulty.elf. Results are checked
 * against the host's own computations; exit status 0 if every check held. */
#include <coproc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures;

#define CHECK(cond, ...)                                                              \
    do {                                                                              \
        if (!(cond)) {                                                                \
            fprintf(stderr, "%s:%d: %s failed: ", __FILE__, __LINE__, #cond);         \
            fprintf(stderr, __VA_ARGS__);                                             \
            fprintf(stderr, " (last error %d: %s)\n", coproc_last_error_code(),       \
                    coproc_last_error());                                             \
            failures++;                                                               \
        }                                                                             \
    } while (0)

static const char *sock, *dir;

static unsigned char *firmware(const char *name, size_t *len) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s.elf", dir, name);
    FILE *f = fopen(path, "rb");
    if (!f) {
        perror(path);
        exit(2);
    }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *p = malloc((size_t)n);
    if (!p || fread(p, 1, (size_t)n, f) != (size_t)n) {
        exit(2);
    }
    fclose(f);
    *len = (size_t)n;
    return p;
}

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

/* The four-call path, then the buffer's memory used in place. */
static void crc_offload(void) {
    size_t elf_len;
    unsigned char *elf = firmware("crc32", &elf_len);
    static unsigned char data[10000];
    uint32_t x = 12345;
    for (size_t i = 0; i < sizeof data; i++) {
        x = x * 1103515245u + 12345u;
        data[i] = (unsigned char)(x >> 16);
    }
    coproc_vcoproc *v = coproc_open(sock, "mcu0");
    CHECK(v != NULL, "open");
    CHECK(coproc_load(v, "crc32", elf, elf_len) == COPROC_OK, "load");
    coproc_buffer *b = coproc_buffer_from(v, data, sizeof data);
    CHECK(b != NULL, "buffer");
    CHECK(coproc_buffer_len(b) == 12288, "%zu bytes", coproc_buffer_len(b));
    uint32_t req[3] = {(uint32_t)coproc_buffer_iova(b), sizeof data, 9}, reply[16] = {0};
    int n = coproc_call(v, req, 3, reply, 16, 0);
    CHECK(n == 16, "%d words", n);
    CHECK(reply[1] == crc32_host(data, sizeof data), "crc %#x", reply[1]);
    CHECK(reply[2] == 9, "tag %u", reply[2]);

    /* In place, through the data pointer; read back through the copy call. */
    memset(coproc_buffer_data(b), 'a', 100);
    unsigned char back[100];
    CHECK(coproc_buffer_read(b, 0, back, sizeof back) == COPROC_OK, "read");
    CHECK(back[99] == 'a', "read back %d", back[99]);
    CHECK(coproc_buffer_write(b, 50, "bbbb", 4) == COPROC_OK, "write");
    memcpy(data, coproc_buffer_data(b), 100);
    req[1] = 100;
    n = coproc_call(v, req, 3, reply, 2, 0);
    CHECK(n == 2, "%d words into room for 2", n);
    CHECK(reply[1] == crc32_host(data, 100), "crc %#x", reply[1]);
    CHECK(coproc_buffer_read(b, 12288 - 2, back, 4) == COPROC_E_MEMORY, "read past the end");
    int st = coproc_state(v);
    CHECK(st == COPROC_STATE_WAITING || st == COPROC_STATE_RUNNABLE || st == COPROC_STATE_RUNNING,
          "state %d", st);
    coproc_buffer_free(b);
    coproc_close(v);
    free(elf);
}

/* qecho: completions carry status = opcode, result[i] = args[i] + opcode. */
static void queue_round_trip(void) {
    size_t elf_len;
    unsigned char *elf = firmware("qecho", &elf_len);
    coproc_vcoproc *v = coproc_open(sock, "mcu0");
    CHECK(v != NULL, "open");
    CHECK(coproc_load(v, "qecho", elf, elf_len) == COPROC_OK, "load");
    coproc_queue *q = coproc_queue_new(v, 16);
    CHECK(q != NULL, "queue");
    CHECK(coproc_queue_new(v, 3) == NULL && coproc_last_error_code() == COPROC_E_INVALID,
          "3 entries refused");
    CHECK(coproc_queue_announce(v, q) == COPROC_OK, "announce");
    for (uint32_t tag = 0; tag < 32; tag++) {
        coproc_sqe s = {.opcode = tag % 7, .tag = tag};
        for (int i = 0; i < 14; i++) {
            s.args[i] = tag * 1000 + (uint32_t)i;
        }
        coproc_cqe c;
        CHECK(coproc_queue_round_trip(q, &s, &c, 0) == COPROC_OK, "round trip %u", tag);
        CHECK(c.tag == tag && c.status == tag % 7, "tag %u status %u", c.tag, c.status);
        for (int i = 0; i < 14; i++) {
            CHECK(c.result[i] == s.args[i] + s.opcode, "result[%d] = %u", i, c.result[i]);
        }
    }
    /* A batch: eight submissions, one doorbell, completions as they come. */
    for (uint32_t tag = 100; tag < 108; tag++) {
        coproc_sqe s = {.opcode = 1, .tag = tag, .args = {tag}};
        CHECK(coproc_queue_submit(q, &s) == COPROC_OK, "submit %u", tag);
    }
    CHECK(coproc_queue_ring(q) == COPROC_OK, "ring");
    uint32_t next = 100;
    while (next < 108) {
        coproc_cqe c;
        int got = coproc_queue_complete(q, &c);
        CHECK(got >= 0, "complete");
        if (got == 1) {
            CHECK(c.tag == next && c.result[0] == next + 1, "tag %u result %u", c.tag, c.result[0]);
            next++;
        } else if (coproc_queue_wait(q, 30000) != 1) {
            CHECK(0, "no completion for %u", next);
            break;
        }
    }
    /* A full ring says so. */
    int full = 0;
    for (uint32_t tag = 0; tag < 17 && !full; tag++) {
        coproc_sqe s = {.opcode = 0, .tag = tag};
        full = coproc_queue_submit(q, &s) == COPROC_E_FULL;
    }
    CHECK(full, "the 17th submission into 16 entries");
    coproc_queue_free(q);
    coproc_close(v);
    free(elf);
}

/* faulty reads an address no one maps: the call fails with the fault. */
static void fault_seen_from_c(void) {
    size_t elf_len;
    unsigned char *elf = firmware("faulty", &elf_len);
    coproc_vcoproc *v = coproc_open(sock, "mcu0");
    CHECK(v != NULL, "open");
    CHECK(coproc_load(v, "faulty", elf, elf_len) == COPROC_OK, "load");
    coproc_fault f;
    CHECK(coproc_last_fault(v, &f) == 0, "no fault yet");
    for (int round = 0; round < 2; round++) {
        uint32_t reply[16];
        int r = coproc_call(v, NULL, 0, reply, 16, 0);
        CHECK(r == COPROC_E_FAULTED, "call answered %d", r);
        CHECK(strstr(coproc_last_error(), "faulted") != NULL, "message %s", coproc_last_error());
        CHECK(coproc_state(v) == COPROC_STATE_FAULTED, "state %d", coproc_state(v));
        CHECK(coproc_last_fault(v, &f) == 1, "a fault record");
        CHECK(f.has_addr && (f.addr & 0xfff) == 0, "address %#llx", (unsigned long long)f.addr);
        CHECK(strcmp(f.access, "read") == 0, "access %s", f.access);
        CHECK(strlen(f.reason) > 0, "a reason");
        /* Still faulted: a second call fails at once. */
        CHECK(coproc_call(v, NULL, 0, reply, 16, 0) == COPROC_E_FAULTED, "again");
        CHECK(coproc_reset(v) == COPROC_OK, "reset");
        CHECK(coproc_state(v) != COPROC_STATE_FAULTED, "state after reset %d", coproc_state(v));
    }
    coproc_close(v);
    free(elf);
}

static void listings(void) {
    coproc_vcoproc *v = coproc_open(sock, "mcu0");
    CHECK(v != NULL, "open");
    char buf[4096];
    int n = coproc_list_coprocs(sock, buf, sizeof buf);
    CHECK(n > 0 && (size_t)n < sizeof buf, "%d bytes", n);
    CHECK(strstr(buf, "\"name\":\"mcu0\"") != NULL, "%s", buf);
    char id[32];
    snprintf(id, sizeof id, "\"id\":%u,", coproc_id(v));
    n = coproc_list_vcoprocs(sock, buf, sizeof buf);
    CHECK(n > 0 && strstr(buf, id) != NULL, "%s not in %s", id, buf);
    /* Too small: cut and NUL-terminated, the full length answered. */
    char small[8];
    CHECK(coproc_list_coprocs(sock, small, sizeof small) > 7 && strlen(small) == 7, "cut");
    CHECK(coproc_list_coprocs(sock, NULL, 0) > 7, "length only");
    coproc_close(v);
}

static void errors(void) {
    CHECK(coproc_open(sock, "nonesuch") == NULL, "unknown pcoproc");
    CHECK(coproc_last_error_code() == COPROC_E_NOT_FOUND, "code %d", coproc_last_error_code());
    CHECK(coproc_open("/nonexistent/coprocd.sock", "mcu0") == NULL, "no daemon");
    CHECK(coproc_last_error_code() == COPROC_E_CONNECT, "code %d", coproc_last_error_code());
    coproc_vcoproc *v = coproc_open(sock, "mcu0");
    CHECK(v != NULL, "open");
    static const unsigned char junk[64] = "not an ELF image";
    CHECK(coproc_load(v, "junk", junk, sizeof junk) < 0, "junk firmware");
    CHECK(strlen(coproc_last_error()) > 0, "a message");
    CHECK(coproc_load(v, NULL, junk, sizeof junk) == COPROC_E_INVALID, "NULL label");
    coproc_close(v);
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s SOCKET FIRMWARE_DIR\n", argv[0]);
        return 2;
    }
    sock = argv[1];
    dir = argv[2];
    crc_offload();
    queue_round_trip();
    fault_seen_from_c();
    listings();
    errors();
    if (failures) {
        fprintf(stderr, "c tests: %d checks failed\n", failures);
        return 1;
    }
    printf("c tests: all passed\n");
    return 0;
}
