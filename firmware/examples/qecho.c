/* qecho: serves a queue. Mailbox in: [0] queue iova, [1] queue mapping
 * length. For every submission it posts a completion with the same tag,
 * status = opcode and result[i] = args[i] + opcode, then notifies once per
 * batch. Between batches it waits with coproc_queue_idle: spinning on the
 * ring for the queue's busy-poll budget, if it has one, then parking. Mailbox out: [0] completions posted, [1] times the domain's ring
 * indices were garbage, [2] 1 if the queue header was refused. */
#include "coproc.h"

int main(void) {
    coproc_wait_doorbell();
    coproc_queue_t q;
    if (coproc_queue_init(&q, coproc_mbox_in(0), coproc_mbox_in(1)) != 0) {
        coproc_mbox_out(2, 1);
        coproc_notify(0);
        for (;;) {
            coproc_wait_doorbell();
        }
    }
    uint32_t done = 0;
    for (;;) {
        coproc_sqe_t s;
        coproc_cqe_t c;
        int posted = 0;
        while (coproc_sq_pop(&q, &s) == 1) {
            c.tag = s.tag;
            c.status = s.opcode;
            for (uint32_t i = 0; i < 14u; i++) {
                c.result[i] = s.args[i] + s.opcode;
            }
            while (coproc_cq_push(&q, &c) == 0) {
                /* Completion ring full: let the domain drain it. */
                coproc_mbox_out(0, done);
                coproc_notify(done);
                coproc_queue_wait_doorbell(&q);
            }
            done++;
            posted = 1;
        }
        coproc_mbox_out(0, done);
        coproc_mbox_out(1, q.garbage);
        if (posted || q.garbage) {
            coproc_notify(done);
        }
        coproc_queue_idle(&q);
    }
}
