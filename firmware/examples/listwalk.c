/* listwalk: walks a linked list the domain built in shared memory mapped at
 * the same address on both sides (shared virtual addressing), so the `next`
 * pointers the domain wrote are valid device pointers.
 * node: { uint32_t next; uint32_t value; }, next == 0 ends the list.
 * mailbox in:  [0] head pointer, [1] most nodes to visit (bounds cycles)
 * mailbox out: [0] sum of the values visited (wrapping), [1] nodes visited,
 *              [2] the pointer the walk stopped at (0: the end of the list);
 *              then notify(nodes visited).
 * A pointer outside the domain's mappings faults the vcoproc at that
 * address (the node's first word is read first), as any bad access does. */
#include "coproc.h"

struct node {
    uint32_t next;
    uint32_t value;
};

int main(void) {
    for (;;) {
        coproc_wait_doorbell();
        uint32_t p = coproc_mbox_in(0);
        uint32_t max = coproc_mbox_in(1);
        uint32_t sum = 0, count = 0;
        while (p != 0u && count < max) {
            const volatile struct node *n = (const volatile struct node *)p;
            /* next first: a bad pointer faults at exactly its own address */
            uint32_t next = n->next;
            sum += n->value;
            count++;
            p = next;
        }
        coproc_mbox_out(0, sum);
        coproc_mbox_out(1, count);
        coproc_mbox_out(2, p);
        coproc_notify(count);
    }
}
