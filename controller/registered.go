package controller

import "sync"

// registrations fans out "node registered" to the components that wait for a
// node to come back (the rollout engine), after the controller validated and
// stored the registration: a refused or spoofed one never reaches them.
type registrations struct {
	mu    sync.Mutex
	next  int
	watch map[int]func(node string)
}

// OnRegistered calls f (on the controller's goroutine: keep it short) after
// every accepted registration, until stop is called.
func (c *Controller) OnRegistered(f func(node string)) (stop func()) {
	r := &c.registered
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.watch == nil {
		r.watch = map[int]func(string){}
	}
	id := r.next
	r.next++
	r.watch[id] = f
	return func() {
		r.mu.Lock()
		delete(r.watch, id)
		r.mu.Unlock()
	}
}

func (r *registrations) notify(node string) {
	r.mu.Lock()
	fs := make([]func(string), 0, len(r.watch))
	for _, f := range r.watch {
		fs = append(fs, f)
	}
	r.mu.Unlock()
	for _, f := range fs {
		f(node)
	}
}
