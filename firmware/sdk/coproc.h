/*
 * coproc firmware SDK: the vcoproc control block and helpers.
 *
 * The framework emulates a page of registers at COPROC_CB_BASE in every
 * vcoproc. Offsets and the memory map below are the firmware ABI; the Rust
 * side (coproc-mcu's `abi` module) must agree, and a test checks that it does.
 * See docs/firmware-abi.md.
 */
#ifndef COPROC_H
#define COPROC_H

#include <stdint.h>

/* Memory map of every vcoproc (its own address space). */
#define COPROC_CODE_BASE 0x00000000u /* firmware code + rodata, read/exec */
#define COPROC_CODE_SIZE 0x00040000u /* 256 KiB */
#define COPROC_DATA_BASE 0x20000000u /* data, bss, stack, read/write */
#define COPROC_DATA_SIZE 0x00020000u /* 128 KiB */
#define COPROC_CB_BASE 0x40000000u   /* control block, read/write */
#define COPROC_CB_SIZE 0x00001000u
#define COPROC_IOVA_BASE 0x60000000u /* window where the domain's mappings appear */
#define COPROC_IOVA_SIZE 0x20000000u /* 512 MiB */

/* Control block registers (byte offsets from COPROC_CB_BASE).
 *
 * Every access is idempotent: the core may be preempted after an access and
 * restart the same instruction, so reading or writing a register twice in a
 * row has the same effect as doing it once. Counters and sequence numbers
 * make that possible for doorbells, notifications and the console. */
#define COPROC_CB_MAGIC 0x000u        /* ro: COPROC_MAGIC */
#define COPROC_CB_VERSION 0x004u      /* ro: COPROC_ABI_VERSION */
#define COPROC_CB_VCOPROC 0x008u      /* ro: this vcoproc's id */
#define COPROC_CB_DOORBELL 0x010u     /* ro: doorbells rung so far (wrapping count) */
#define COPROC_CB_DOORBELL_ACK 0x00cu /* rw: doorbell count the firmware has handled */
#define COPROC_CB_WAIT 0x014u         /* wo: park while DOORBELL == DOORBELL_ACK */
#define COPROC_CB_NOTIFY 0x018u       /* wo: sequence number; a new value notifies the domain */
#define COPROC_CB_EXIT 0x01cu         /* wo: stop this vcoproc with an exit code */
#define COPROC_CB_CONSOLE 0x020u      /* wo: (sequence << 8) | byte; a new sequence appends the byte */
#define COPROC_CB_NOTIFY_TAG 0x024u   /* rw: tag carried by the next notification */
#define COPROC_CB_TIME_LO 0x028u      /* ro: run time in ns, low word (latches TIME_HI) */
#define COPROC_CB_TIME_HI 0x02cu      /* ro: run time in ns, high word as latched */
#define COPROC_CB_FAULT_REASON 0x030u /* ro: reason of this context's latest fault since its firmware was loaded, 0: none */
#define COPROC_CB_FAULT_ADDR 0x034u   /* ro: its address */
#define COPROC_CB_FAULT_PC 0x038u     /* ro: its pc */
#define COPROC_CB_MBOX_IN 0x100u      /* ro: COPROC_MBOX_WORDS words, domain -> firmware */
#define COPROC_CB_MBOX_OUT 0x140u     /* rw: COPROC_MBOX_WORDS words, firmware -> domain */
#define COPROC_MBOX_WORDS 16u

#define COPROC_MAGIC 0x434f5052u /* "COPR" */
#define COPROC_ABI_VERSION 1u

#define COPROC_REG(off) (*(volatile uint32_t *)(COPROC_CB_BASE + (off)))

static inline uint32_t coproc_mbox_in(uint32_t i) {
    return COPROC_REG(COPROC_CB_MBOX_IN + 4u * (i % COPROC_MBOX_WORDS));
}

static inline void coproc_mbox_out(uint32_t i, uint32_t v) {
    COPROC_REG(COPROC_CB_MBOX_OUT + 4u * (i % COPROC_MBOX_WORDS)) = v;
}

/* Block until at least one doorbell has been rung since the last call;
 * returns how many. */
static inline uint32_t coproc_wait_doorbell(void) {
    uint32_t acked = COPROC_REG(COPROC_CB_DOORBELL_ACK);
    uint32_t rung;
    /* WAIT may return early (after a preemption, or when a doorbell raced
     * with it), so the counter is what decides. */
    while ((rung = COPROC_REG(COPROC_CB_DOORBELL)) == acked) {
        COPROC_REG(COPROC_CB_WAIT) = 1u;
    }
    COPROC_REG(COPROC_CB_DOORBELL_ACK) = rung;
    return rung - acked;
}

/* Tell the domain the mailbox holds an answer, with a tag. */
static inline void coproc_notify(uint32_t tag) {
    static uint32_t seq;
    COPROC_REG(COPROC_CB_NOTIFY_TAG) = tag;
    COPROC_REG(COPROC_CB_NOTIFY) = ++seq;
}

static inline uint64_t coproc_time_ns(void) {
    uint32_t lo = COPROC_REG(COPROC_CB_TIME_LO);
    uint32_t hi = COPROC_REG(COPROC_CB_TIME_HI);
    return ((uint64_t)hi << 32) | lo;
}

static inline void coproc_putc(char c) {
    static uint32_t seq;
    seq = (seq + 1u) & 0xffu;
    COPROC_REG(COPROC_CB_CONSOLE) = (seq << 8) | (uint8_t)c;
}

static inline void coproc_puts(const char *s) {
    while (*s) {
        coproc_putc(*s++);
    }
}

__attribute__((noreturn)) static inline void coproc_exit(uint32_t code) {
    for (;;) {
        COPROC_REG(COPROC_CB_EXIT) = code;
    }
}

#endif /* COPROC_H */
