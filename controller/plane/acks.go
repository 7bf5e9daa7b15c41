package plane

import (
	"strconv"
	"sync"

	"github.com/nats-io/nats.go"
)

// ackMux routes the agents' acknowledgements of signed tasks and cancels to
// their waiters through one wildcard subscription. A SubscribeSync per task,
// as before, made nats.go allocate a 65,536-slot channel (512 KiB) for every
// dispatch: an exec to 2,000 nodes allocated 1 GiB.
type ackMux struct {
	prefix string // <inbox>. ; a waiter's subject is prefix + id
	sub    *nats.Subscription

	mu      sync.Mutex
	next    uint64
	waiters map[string]chan *nats.Msg
}

func newAckMux(nc *nats.Conn) (*ackMux, error) {
	m := &ackMux{prefix: nc.NewInbox() + ".", waiters: map[string]chan *nats.Msg{}}
	sub, err := nc.Subscribe(m.prefix+"*", m.deliver)
	if err != nil {
		return nil, err
	}
	// Acks are small and consumed at once; a flood of them only drops acks.
	_ = sub.SetPendingLimits(1<<16, 16<<20)
	m.sub = sub
	return m, nil
}

// open returns a reply subject, the channel its one answer arrives on, and
// the function that forgets it (call it when done waiting).
func (m *ackMux) open() (string, <-chan *nats.Msg, func()) {
	ch := make(chan *nats.Msg, 1)
	m.mu.Lock()
	m.next++
	subj := m.prefix + strconv.FormatUint(m.next, 36)
	m.waiters[subj] = ch
	m.mu.Unlock()
	return subj, ch, func() {
		m.mu.Lock()
		delete(m.waiters, subj)
		m.mu.Unlock()
	}
}

func (m *ackMux) deliver(msg *nats.Msg) {
	m.mu.Lock()
	ch := m.waiters[msg.Subject]
	delete(m.waiters, msg.Subject) // one answer per request
	m.mu.Unlock()
	if ch != nil {
		ch <- msg
	}
}
