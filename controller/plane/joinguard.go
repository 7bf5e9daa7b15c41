package plane

import (
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Join endpoint bounds (Options override them).
const (
	defaultJoinRate          = 5  // joins per second per source address
	defaultJoinBurst         = 20 // joins a source may make at once
	defaultMaxJoinSources    = 10000
	defaultMaxConcurrentJoin = 32
)

// joinGuard bounds /v1/join: a token bucket per source address (IPv6 per /64),
// kept in a map of at most maxSources entries (the least recently seen goes
// first), and a cap on joins in flight. A refused join costs the controller
// no KV read and no hash.
type joinGuard struct {
	rate       rate.Limit
	burst      int
	maxSources int
	inflight   chan struct{}

	mu         sync.Mutex
	sources    map[netip.Addr]*sourceLimiter
	busyLogged time.Time
}

type sourceLimiter struct {
	lim    *rate.Limiter
	seen   time.Time
	logged time.Time // last refusal logged: a flood must not flood the log too
}

// refusalLogEvery is how often refusals of one source (or of the in-flight cap) are logged.
const refusalLogEvery = 10 * time.Second

func newJoinGuard(perSecond float64, burst, maxSources, maxConcurrent int) *joinGuard {
	if perSecond <= 0 {
		perSecond = defaultJoinRate
	}
	if burst <= 0 {
		burst = defaultJoinBurst
	}
	if maxSources <= 0 {
		maxSources = defaultMaxJoinSources
	}
	if maxConcurrent <= 0 {
		maxConcurrent = defaultMaxConcurrentJoin
	}
	return &joinGuard{rate: rate.Limit(perSecond), burst: burst, maxSources: maxSources,
		inflight: make(chan struct{}, maxConcurrent), sources: map[netip.Addr]*sourceLimiter{}}
}

// sourceKey is the address a limit applies to: the IPv4 address, or the /64
// of an IPv6 address (one host usually holds a whole /64).
func sourceKey(remoteAddr string) netip.Addr {
	host, _, err := net.SplitHostPort(remoteAddr)
	if err != nil {
		host = remoteAddr
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		return netip.Addr{}
	}
	a = a.Unmap().WithZone("")
	if a.Is6() {
		p, _ := a.Prefix(64)
		return p.Addr()
	}
	return a
}

// allow takes one token from the source's bucket.
func (g *joinGuard) allow(src netip.Addr, now time.Time) bool {
	ok, _ := g.allowLog(src, now)
	return ok
}

// allowLog is allow, and says whether a refusal should be logged now.
func (g *joinGuard) allowLog(src netip.Addr, now time.Time) (allowed, logIt bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	s, ok := g.sources[src]
	if !ok {
		if len(g.sources) >= g.maxSources {
			g.evictLocked()
		}
		s = &sourceLimiter{lim: rate.NewLimiter(g.rate, g.burst)}
		g.sources[src] = s
	}
	s.seen = now
	if s.lim.AllowN(now, 1) {
		return true, false
	}
	if now.Sub(s.logged) < refusalLogEvery {
		return false, false
	}
	s.logged = now
	return false, true
}

// evictLocked drops the least recently seen source.
func (g *joinGuard) evictLocked() {
	var oldest netip.Addr
	var at time.Time
	first := true
	for a, s := range g.sources {
		if first || s.seen.Before(at) {
			oldest, at, first = a, s.seen, false
		}
	}
	delete(g.sources, oldest)
}

func (g *joinGuard) logBusy(now time.Time) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if now.Sub(g.busyLogged) < refusalLogEvery {
		return false
	}
	g.busyLogged = now
	return true
}

func (g *joinGuard) size() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.sources)
}

// wrap answers 429 to a source over its rate and 503 when too many joins are
// in flight, both at once and with Retry-After; agents retry both.
func (g *joinGuard) wrap(log func(msg string, args ...any), h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		now := time.Now()
		if ok, logIt := g.allowLog(sourceKey(r.RemoteAddr), now); !ok {
			if logIt {
				log("join refused: too many joins from this address (logged once per 10s per address)", "remote", r.RemoteAddr)
			}
			busy(w, http.StatusTooManyRequests, "too many joins from this address: retry later")
			return
		}
		select {
		case g.inflight <- struct{}{}:
			defer func() { <-g.inflight }()
		default:
			if g.logBusy(now) {
				log("join refused: too many joins in flight (logged once per 10s)", "remote", r.RemoteAddr, "max", cap(g.inflight))
			}
			busy(w, http.StatusServiceUnavailable, "controller busy with other joins: retry later")
			return
		}
		h(w, r)
	}
}

func busy(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Retry-After", strconv.Itoa(1))
	writeJoinError(w, code, msg)
}
