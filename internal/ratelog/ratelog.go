// Package ratelog logs refusals of untrusted requests, naming the sender,
// without letting a sender flood the log: the first refusal of a kind from a
// sender is logged at once, then at most one line per interval for that
// sender and kind, with the number suppressed since. Its memory is bounded.
package ratelog

import (
	"log/slog"
	"sync"
	"time"
)

// Defaults of New.
const (
	// DefaultEvery is the interval between two lines for one sender and kind.
	DefaultEvery = 10 * time.Second
	// DefaultMaxKeys bounds the (sender, kind) pairs remembered. Senders are
	// authenticated nodes or source addresses; past the bound the counts
	// start afresh (a flood of distinct senders logs at most this many lines
	// per interval).
	DefaultMaxKeys = 16384
)

// Logger is a rate-limited warning logger; safe for concurrent use.
type Logger struct {
	log     *slog.Logger
	every   time.Duration
	maxKeys int
	now     func() time.Time

	mu   sync.Mutex
	seen map[key]*count
}

type key struct{ sender, kind string }

type count struct {
	last       time.Time
	suppressed int
}

// Option configures New.
type Option func(*Logger)

// WithMaxKeys replaces DefaultMaxKeys.
func WithMaxKeys(n int) Option { return func(l *Logger) { l.maxKeys = n } }

// WithClock replaces time.Now (tests).
func WithClock(now func() time.Time) Option { return func(l *Logger) { l.now = now } }

// New logs to log (nil: slog.Default()) at most one line per every (<= 0:
// DefaultEvery) per sender and kind.
func New(log *slog.Logger, every time.Duration, opts ...Option) *Logger {
	if log == nil {
		log = slog.Default()
	}
	if every <= 0 {
		every = DefaultEvery
	}
	l := &Logger{log: log, every: every, maxKeys: DefaultMaxKeys, now: time.Now, seen: map[key]*count{}}
	for _, o := range opts {
		o(l)
	}
	if l.maxKeys <= 0 {
		l.maxKeys = DefaultMaxKeys
	}
	return l
}

// Warn logs msg with args, adding senderKey=sender, unless this sender and
// kind were logged less than the interval ago (then it only counts). It
// says whether it logged.
func (l *Logger) Warn(senderKey, sender, kind, msg string, args ...any) bool {
	l.mu.Lock()
	now := l.now()
	k := key{sender, kind}
	c := l.seen[k]
	if c == nil {
		if len(l.seen) >= l.maxKeys {
			clear(l.seen)
		}
		c = &count{}
		l.seen[k] = c
	} else if now.Sub(c.last) < l.every {
		c.suppressed++
		l.mu.Unlock()
		return false
	}
	suppressed := c.suppressed
	c.last, c.suppressed = now, 0
	l.mu.Unlock()
	args = append([]any{senderKey, sender}, args...)
	if suppressed > 0 {
		args = append(args, "alsoRefusedSinceLastWarning", suppressed)
	}
	l.log.Warn(msg, args...)
	return true
}

// Len is the number of (sender, kind) pairs remembered (tests).
func (l *Logger) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.seen)
}
