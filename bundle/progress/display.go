package progress

import (
	"io"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/vbauerster/mpb/v8"
	"github.com/vbauerster/mpb/v8/decor"
	"golang.org/x/term"
)

// New returns bars drawn on w when w is a terminal, plain log lines otherwise.
func New(w io.Writer) Reporter {
	if f, ok := w.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		if cols, _, err := term.GetSize(int(f.Fd())); err != nil || cols == 0 {
			return &lines{} // a terminal without a size (some CI ptys) cannot show bars
		}
		return &bars{p: mpb.New(mpb.WithOutput(w), mpb.WithWidth(40), mpb.WithRefreshRate(150*time.Millisecond))}
	}
	return &lines{}
}

type bars struct{ p *mpb.Progress }

func (b *bars) Start(name string, total int64) Bar {
	if total < 0 {
		total = 0
	}
	bar := b.p.AddBar(total,
		mpb.PrependDecorators(decor.Name(name, decor.WC{C: decor.DindentRight | decor.DextraSpace}), decor.CountersKibiByte("% .1f / % .1f")),
		mpb.AppendDecorators(decor.OnComplete(decor.Percentage(decor.WC{W: 5}), "done")),
	)
	return &mpbBar{b: bar, total: total}
}

func (b *bars) Wait() { b.p.Wait() }

type mpbBar struct {
	b     *mpb.Bar
	total int64
	mu    sync.Mutex
	n     int64
}

func (m *mpbBar) Add(n int64) {
	m.mu.Lock()
	m.n += n
	if m.total == 0 || m.n > m.total {
		m.b.SetTotal(m.n+1, false)
	}
	m.mu.Unlock()
	m.b.IncrInt64(n)
}

func (m *mpbBar) Done(err error) {
	if err != nil {
		m.b.Abort(false)
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.b.SetTotal(m.n, true)
}

// lines logs the start and end of each unit of work.
type lines struct{}

func (lines) Start(name string, total int64) Bar {
	slog.Info("start", "what", name, "bytes", total)
	return &lineBar{name: name, start: time.Now()}
}
func (lines) Wait() {}

type lineBar struct {
	name  string
	start time.Time
	mu    sync.Mutex
	n     int64
}

func (l *lineBar) Add(n int64) { l.mu.Lock(); l.n += n; l.mu.Unlock() }
func (l *lineBar) Done(err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err != nil {
		slog.Warn("failed", "what", l.name, "bytes", l.n, "err", err)
		return
	}
	slog.Info("done", "what", l.name, "bytes", l.n, "took", time.Since(l.start).Round(time.Millisecond))
}
