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
#define COPROC_CODE_SIZE 0x00100000u /* 1 MiB by default (the pcoproc's code_kib) */
#define COPROC_DATA_BASE 0x20000000u /* data, bss, stack, read/write */
#define COPROC_DATA_SIZE 0x00040000u /* 256 KiB by default (the pcoproc's data_kib) */
#define COPROC_CB_BASE 0x4AAAA000u   /* control block, read/write (ABI 2; was 0x40000000) */
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
#define COPROC_CB_FENCE 0x03cu        /* wo: a full memory barrier as the host's other threads see it */
#define COPROC_CB_MBOX_IN 0x100u      /* ro: COPROC_MBOX_WORDS words, domain -> firmware */
#define COPROC_CB_MBOX_OUT 0x140u     /* rw: COPROC_MBOX_WORDS words, firmware -> domain */
#define COPROC_MBOX_WORDS 16u

#define COPROC_MAGIC 0x434f5052u /* "COPR" */
#define COPROC_ABI_VERSION 2u

#define COPROC_REG(off) (*(volatile uint32_t *)(COPROC_CB_BASE + (off)))

/* The Cortex-M System Control Space (see docs/firmware-abi.md for what is
 * modelled; other addresses in it read as zero and ignore writes). */
#define COPROC_SCS_BASE 0xe000e000u
#define COPROC_SCS_ACTLR 0xe000e008u      /* rw, no effect */
#define COPROC_SYST_CSR 0xe000e010u       /* SysTick control and status */
#define COPROC_SYST_RVR 0xe000e014u       /* SysTick reload value (24 bits) */
#define COPROC_SYST_CVR 0xe000e018u       /* SysTick current value; a write clears it */
#define COPROC_SYST_CALIB 0xe000e01cu     /* ro: TENMS ticks per 10 ms */
#define COPROC_NVIC_ISER 0xe000e100u      /* interrupt set-enable (IRQs 0..31) */
#define COPROC_NVIC_ICER 0xe000e180u      /* interrupt clear-enable */
#define COPROC_NVIC_ISPR 0xe000e200u      /* interrupt set-pending */
#define COPROC_NVIC_ICPR 0xe000e280u      /* interrupt clear-pending */
#define COPROC_NVIC_IABR 0xe000e300u      /* ro: interrupt active */
#define COPROC_NVIC_IPR 0xe000e400u       /* priority bytes, IRQs 0..31 */
#define COPROC_SCB_CPUID 0xe000ed00u      /* ro: COPROC_CPUID */
#define COPROC_SCB_ICSR 0xe000ed04u       /* interrupt control and state */
#define COPROC_SCB_VTOR 0xe000ed08u       /* vector table offset */
#define COPROC_SCB_AIRCR 0xe000ed0cu      /* application interrupt and reset control */
#define COPROC_SCB_SCR 0xe000ed10u        /* system control (stored, no effect) */
#define COPROC_SCB_CCR 0xe000ed14u        /* configuration and control (stored, no effect) */
#define COPROC_SCB_SHPR1 0xe000ed18u      /* system handler priorities 4..7 */
#define COPROC_SCB_SHPR2 0xe000ed1cu      /* 8..11 */
#define COPROC_SCB_SHPR3 0xe000ed20u      /* 12..15 */
#define COPROC_SCB_SHCSR 0xe000ed24u      /* system handler control and state */
#define COPROC_SCB_CFSR 0xe000ed28u       /* ro: configurable fault status of the last fault */
#define COPROC_SCB_HFSR 0xe000ed2cu       /* ro: 0 */
#define COPROC_SCB_MMFAR 0xe000ed34u      /* ro: address of the last data access fault */
#define COPROC_SCB_BFAR 0xe000ed38u       /* ro: same */
#define COPROC_SCB_CPACR 0xe000ed88u      /* coprocessor access (FPU: CP10, CP11) */
#define COPROC_NVIC_STIR 0xe000ef00u      /* wo: software-trigger an IRQ */
#define COPROC_FPU_FPCCR 0xe000ef34u      /* FP context control (stored) */
#define COPROC_FPU_FPCAR 0xe000ef38u      /* FP context address (stored) */
#define COPROC_FPU_FPDSCR 0xe000ef3cu     /* default FPSCR (stored) */
#define COPROC_CPUID 0x410fc241u          /* Cortex-M4 r0p1 */
#define COPROC_SYSTICK_HZ 100000000u      /* SysTick ticks per second of the vcoproc's run time */
#define COPROC_NVIC_IRQS 32u              /* external interrupts 0..31 */
#define COPROC_IRQ_DOORBELL 0u            /* asserted while a doorbell is pending */
#define COPROC_EXIT_UNHANDLED 0xe0000000u /* exit code | exception number: no handler */
#define COPROC_EXIT_SYSRESETREQ 0xe0001000u /* exit code of a write of AIRCR.SYSRESETREQ */

#define COPROC_SCS(addr) (*(volatile uint32_t *)(addr))

/* Enable an external interrupt in the NVIC. */
static inline void coproc_irq_enable(uint32_t irq) {
    COPROC_SCS(COPROC_NVIC_ISER) = 1u << (irq % COPROC_NVIC_IRQS);
}

/* Sleep until an interrupt: parks the vcoproc like WAIT until one is
 * pending (a doorbell for IRQ 0, SysTick...). */
static inline void coproc_wfi(void) {
    __asm__ volatile("wfi" ::: "memory");
}

static inline void coproc_irq_on(void) {
    __asm__ volatile("cpsie i" ::: "memory");
}

static inline void coproc_irq_off(void) {
    __asm__ volatile("cpsid i" ::: "memory");
}

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
/* The sequence numbers, one per image (in crt0.c), so that every source
 * file (and stdio) counts on the same ones. */
extern uint32_t coproc_notify_seq, coproc_console_seq;

static inline void coproc_notify(uint32_t tag) {
    COPROC_REG(COPROC_CB_NOTIFY_TAG) = tag;
    COPROC_REG(COPROC_CB_NOTIFY) = ++coproc_notify_seq;
}

static inline uint64_t coproc_time_ns(void) {
    uint32_t lo = COPROC_REG(COPROC_CB_TIME_LO);
    uint32_t hi = COPROC_REG(COPROC_CB_TIME_HI);
    return ((uint64_t)hi << 32) | lo;
}

static inline void coproc_putc(char c) {
    coproc_console_seq = (coproc_console_seq + 1u) & 0xffu;
    COPROC_REG(COPROC_CB_CONSOLE) = (coproc_console_seq << 8) | (uint8_t)c;
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

/* ---- Queues: submission and completion rings in domain memory ----------
 *
 * Layout of a queue mapping (all little-endian u32):
 *   0x000 header: magic COPROC_QUEUE_MAGIC, entries (power of two), entry
 *         size (64), flags = busy-poll budget in us (0: event-driven;
 *         at most COPROC_QUEUE_MAX_POLL_US, larger values are clamped)
 *   0x040 sq_tail  (written by the domain)
 *   0x080 sq_head  (written by the firmware)
 *   0x0c0 cq_tail  (written by the firmware)
 *   0x100 cq_head  (written by the domain)
 *   0x140 cq_wake  (written by the domain; read by the daemon)
 *   0x180 sq_polling (written by the firmware: 1 while it busy-polls the
 *         submission tail and will look at it again before it parks, so
 *         the domain need not ring; 0 before it parks)
 *   0x1000 submission entries, then completion entries, 64 bytes each.
 *
 * Ordering: an entry is written before the index that publishes it, and
 * copied out before the index that gives its slot back. On this single
 * core the volatile accesses keep that order (no cache between the core
 * and the mapped pages); the host side uses Acquire/Release atomics
 * (coproc-abi).
 *
 * The domain is untrusted: the helpers keep their own copies of the indices
 * they own, mask every slot number, and copy an entry out before using it,
 * so no index the domain writes can make them touch memory outside the
 * ring. */
#define COPROC_QUEUE_MAGIC 0x45555143u /* "CQUE" */
#define COPROC_QUEUE_MAX_ENTRIES 4096u
#define COPROC_QUEUE_ENTRY_SIZE 64u
#define COPROC_QUEUE_RING_OFFSET 0x1000u
#define COPROC_QUEUE_MAX_POLL_US 1000u

typedef struct {
    uint32_t opcode;
    uint32_t tag;
    uint32_t args[14];
} coproc_sqe_t;

typedef struct {
    uint32_t tag;
    uint32_t status;
    uint32_t result[14];
} coproc_cqe_t;

typedef struct {
    volatile uint32_t *base;
    const volatile coproc_sqe_t *sq;
    volatile coproc_cqe_t *cq;
    uint32_t mask;
    uint32_t sq_head; /* private copies of the indices we own */
    uint32_t cq_tail;
    uint32_t garbage; /* times the domain's indices made no sense */
    uint32_t poll_us; /* busy-poll budget from the header's flags word */
} coproc_queue_t;

#define COPROC_Q_WORD(q, off) ((q)->base[(off) / 4u])

/* Attach to the queue mapped at `iova`, `len` bytes. Returns 0, or -1 if the
 * header is not a valid queue that fits the mapping. */
static inline int coproc_queue_init(coproc_queue_t *q, uint32_t iova, uint32_t len) {
    q->base = (volatile uint32_t *)iova;
    uint32_t entries = q->base[1];
    if (q->base[0] != COPROC_QUEUE_MAGIC || entries == 0u || entries > COPROC_QUEUE_MAX_ENTRIES ||
        (entries & (entries - 1u)) != 0u || q->base[2] != COPROC_QUEUE_ENTRY_SIZE ||
        len < COPROC_QUEUE_RING_OFFSET + 2u * entries * COPROC_QUEUE_ENTRY_SIZE) {
        return -1;
    }
    q->mask = entries - 1u;
    q->sq = (const volatile coproc_sqe_t *)(iova + COPROC_QUEUE_RING_OFFSET);
    q->cq = (volatile coproc_cqe_t *)(iova + COPROC_QUEUE_RING_OFFSET + entries * COPROC_QUEUE_ENTRY_SIZE);
    q->sq_head = COPROC_Q_WORD(q, 0x080u);
    q->cq_tail = COPROC_Q_WORD(q, 0x0c0u);
    q->garbage = 0u;
    uint32_t poll_us = COPROC_Q_WORD(q, 0x00cu);
    q->poll_us = poll_us > COPROC_QUEUE_MAX_POLL_US ? COPROC_QUEUE_MAX_POLL_US : poll_us;
    COPROC_Q_WORD(q, 0x180u) = 0u; /* not polling yet: the domain rings */
    return 0;
}

/* A full memory barrier between this core's accesses before and after it,
 * as the host's other threads (the domain's) see them. */
static inline void coproc_fence(void) {
    COPROC_REG(COPROC_CB_FENCE) = 0u;
}

/* Park until a doorbell, after telling the domain to ring for what it
 * submits from now on (see coproc_queue_idle). */
static inline void coproc_queue_wait_doorbell(coproc_queue_t *q) {
    COPROC_Q_WORD(q, 0x180u) = 0u;
    coproc_wait_doorbell();
}

/* Nothing left to do on `q`: wait for more. With a busy-poll budget, first
 * spin on the submission tail for up to that long (measured on this
 * vcoproc's run-time register, so the spin counts only while it runs and
 * is charged to it); a new submission returns at once, without parking.
 * While it spins, sq_polling says so and the domain does not ring. Before
 * parking, sq_polling goes back to 0 and the tail is looked at once more,
 * with a barrier between: the domain publishes its tail before it reads
 * sq_polling (with a barrier too), so a submission is either seen here or
 * rung for. Then (and always with a zero budget) park until a doorbell.
 * Returns 1 if a submission arrived while spinning, 0 after a doorbell. */
static inline int coproc_queue_idle(coproc_queue_t *q) {
    if (q->poll_us != 0u) {
        COPROC_Q_WORD(q, 0x180u) = 1u;
        uint64_t end = coproc_time_ns() + (uint64_t)q->poll_us * 1000u;
        do {
            /* The run-time register costs the host a clock read: the tail
             * is looked at 32 times per read. */
            for (uint32_t i = 0u; i < 32u; i++) {
                if (COPROC_Q_WORD(q, 0x040u) != q->sq_head) {
                    return 1;
                }
            }
        } while (coproc_time_ns() < end);
        COPROC_Q_WORD(q, 0x180u) = 0u;
        coproc_fence();
        if (COPROC_Q_WORD(q, 0x040u) != q->sq_head) {
            return 1;
        }
    }
    coproc_wait_doorbell();
    return 0;
}

/* Take the next submission into `out`. Returns 1, or 0 if there is none.
 * A tail more than a ring ahead is garbage: it is skipped (counted). */
static inline int coproc_sq_pop(coproc_queue_t *q, coproc_sqe_t *out) {
    uint32_t tail = COPROC_Q_WORD(q, 0x040u);
    uint32_t avail = tail - q->sq_head;
    if (avail == 0u) {
        return 0;
    }
    if (avail > q->mask + 1u) {
        q->garbage++;
        q->sq_head = tail;
        COPROC_Q_WORD(q, 0x080u) = q->sq_head;
        return 0;
    }
    const volatile coproc_sqe_t *e = &q->sq[q->sq_head & q->mask];
    out->opcode = e->opcode;
    out->tag = e->tag;
    for (uint32_t i = 0; i < 14u; i++) {
        out->args[i] = e->args[i];
    }
    q->sq_head++;
    COPROC_Q_WORD(q, 0x080u) = q->sq_head;
    return 1;
}

/* Post a completion. Returns 1, or 0 if the completion ring is full (or the
 * domain's head makes no sense). */
static inline int coproc_cq_push(coproc_queue_t *q, const coproc_cqe_t *c) {
    uint32_t head = COPROC_Q_WORD(q, 0x100u);
    if (q->cq_tail - head > q->mask) {
        return 0;
    }
    volatile coproc_cqe_t *e = &q->cq[q->cq_tail & q->mask];
    e->tag = c->tag;
    e->status = c->status;
    for (uint32_t i = 0; i < 14u; i++) {
        e->result[i] = c->result[i];
    }
    q->cq_tail++;
    COPROC_Q_WORD(q, 0x0c0u) = q->cq_tail;
    return 1;
}

#endif /* COPROC_H */
