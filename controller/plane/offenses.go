package plane

import (
	"log/slog"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// offenses logs refused node messages, naming the node: the first of a kind
// at once, then at most one line per interval with the number dropped since,
// so that a hostile node cannot flood the controller's log either.
type offenses struct {
	log   *slog.Logger
	every time.Duration

	mu   sync.Mutex
	seen map[offenseKey]*offenseCount
}

type offenseKey struct{ node, kind string }

type offenseCount struct {
	last       time.Time
	suppressed int
}

// maxOffenseKeys bounds the map: node names come from authenticated subjects,
// so this is only hit by a very large fleet; then the counts start afresh.
const maxOffenseKeys = 16384

func newOffenses(log *slog.Logger, every time.Duration) *offenses {
	return &offenses{log: log, every: every, seen: map[offenseKey]*offenseCount{}}
}

// warn logs msg with the node and args, unless the same node and kind were
// logged less than the interval ago (then it only counts).
func (o *offenses) warn(node, kind, msg string, args ...any) {
	o.mu.Lock()
	now := time.Now()
	k := offenseKey{node, kind}
	c := o.seen[k]
	if c == nil {
		if len(o.seen) >= maxOffenseKeys {
			clear(o.seen)
		}
		c = &offenseCount{}
		o.seen[k] = c
	} else if now.Sub(c.last) < o.every {
		c.suppressed++
		o.mu.Unlock()
		return
	}
	suppressed := c.suppressed
	c.last, c.suppressed = now, 0
	o.mu.Unlock()
	args = append([]any{"node", node}, args...)
	if suppressed > 0 {
		args = append(args, "alsoDroppedSinceLastWarning", suppressed)
	}
	o.log.Warn(msg, args...)
}

// nodeRates is a token bucket per node, for messages every node sends on one
// subscription: checked before any decoding, so that a flooding node costs
// the others a map lookup per message. Node names come from authenticated
// subjects; the map is bounded like offenses.
type nodeRates struct {
	rate  rate.Limit
	burst int

	mu  sync.Mutex
	lim map[string]*rate.Limiter
}

func newNodeRates(perSecond float64, burst int) *nodeRates {
	return &nodeRates{rate: rate.Limit(perSecond), burst: burst, lim: map[string]*rate.Limiter{}}
}

// allow takes one token from node's bucket.
func (r *nodeRates) allow(node string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	l := r.lim[node]
	if l == nil {
		if len(r.lim) >= maxOffenseKeys {
			clear(r.lim)
		}
		l = rate.NewLimiter(r.rate, r.burst)
		r.lim[node] = l
	}
	return l.Allow()
}
