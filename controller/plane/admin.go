package plane

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/flotilla-dev/flotilla/protocol"
	"github.com/nats-io/nats.go"
)

// AdminHandler answers one admin request; its return value becomes the reply body.
type AdminHandler func(ctx context.Context, call *AdminCall) (any, error)

// AdminCall is one admin request being handled.
type AdminCall struct {
	Name string
	Body json.RawMessage

	c      *Controller
	stream string
}

// Decode unmarshals the request body into v.
func (a *AdminCall) Decode(v any) error {
	if len(a.Body) == 0 {
		return nil
	}
	if err := json.Unmarshal(a.Body, v); err != nil {
		return fmt.Errorf("admin %s request: %w", a.Name, err)
	}
	return nil
}

// Send publishes an intermediate message on the caller's stream (no-op without one).
func (a *AdminCall) Send(v any) error {
	if a.stream == "" {
		return nil
	}
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	m := nats.NewMsg(a.stream)
	m.Header.Set(protocol.HeaderStream, "1")
	m.Data = data
	return a.c.nc.PublishMsg(m)
}

// HandleAdmin registers h for flotilla.v1.admin.<name>, replacing any earlier one.
// Handlers run concurrently, one goroutine per request.
func (c *Controller) HandleAdmin(name string, h AdminHandler) {
	c.adminMu.Lock()
	c.admin[name] = h
	c.adminMu.Unlock()
}

// adminInbox says whether subject lies in the inbox space admins may subscribe
// to: the only place the controller answers or streams an admin request, so
// that admin credentials do not lend the controller's permissions.
func adminInbox(subject string) bool {
	rest, ok := strings.CutPrefix(subject, "_INBOX.")
	return ok && rest != "" && !strings.ContainsAny(rest, "*> \t\r\n") && !strings.Contains(rest, "..") && !strings.HasSuffix(rest, ".")
}

func (c *Controller) onAdmin(m *nats.Msg) {
	name := strings.TrimPrefix(m.Subject, protocol.AdminSubject(""))
	if m.Reply != "" && !adminInbox(m.Reply) {
		c.offenses.warn("(admin)", "admin reply subject", "dropping an admin request whose reply subject is outside _INBOX.>",
			"request", name, "replySubject", m.Reply)
		return
	}
	c.adminMu.RLock()
	h := c.admin[name]
	c.adminMu.RUnlock()
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		reply := protocol.AdminReply{}
		var req protocol.AdminRequest
		var body any
		err := protocol.Decode(m.Data, &req)
		switch {
		case err != nil:
		case req.Stream != "" && !adminInbox(req.Stream):
			err = fmt.Errorf("admin %s request: stream subject %q is outside _INBOX.>", name, req.Stream)
			c.offenses.warn("(admin)", "admin stream subject", "refusing an admin request whose stream subject is outside _INBOX.>",
				"request", name, "streamSubject", req.Stream)
		case h == nil:
			err = fmt.Errorf("unknown admin request %q: is the controller older than this CLI?", name)
		default:
			stop := c.keepalive(req.Stream)
			body, err = h(c.ctx, &AdminCall{Name: name, Body: req.Body, c: c, stream: req.Stream})
			stop()
		}
		if err != nil {
			reply.Error = err.Error()
		} else {
			reply.OK = true
			if body != nil {
				reply.Body, err = json.Marshal(body)
				if err != nil {
					reply = protocol.AdminReply{Error: fmt.Sprintf("encode reply: %v", err)}
				}
			}
		}
		data, _ := json.Marshal(reply)
		if m.Reply != "" {
			_ = m.Respond(data)
		}
	}()
}

// keepalive tells the caller of a streamed request, every
// protocol.AdminKeepaliveInterval until stop, that this controller still works
// on it: a client whose controller died can then tell (see
// protocol.HeaderKeepalive) instead of waiting out its timeout.
func (c *Controller) keepalive(stream string) (stop func()) {
	if stream == "" {
		return func() {}
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(protocol.AdminKeepaliveInterval)
		defer t.Stop()
		send := func() {
			m := nats.NewMsg(stream)
			m.Header.Set(protocol.HeaderStream, "1")
			m.Header.Set(protocol.HeaderKeepalive, "1")
			_ = c.nc.PublishMsg(m)
		}
		send() // at once: the client knows from now on that keepalives come
		for {
			select {
			case <-done:
				return
			case <-c.ctx.Done():
				return
			case <-t.C:
				send()
			}
		}
	}()
	return func() { close(done); wg.Wait() }
}

func (c *Controller) registerBuiltinAdmin() {
	c.HandleAdmin(protocol.AdminNodes, func(ctx context.Context, _ *AdminCall) (any, error) { return c.Nodes(ctx) })
	c.HandleAdmin(protocol.AdminTokenCreate, func(ctx context.Context, a *AdminCall) (any, error) {
		var req protocol.TokenCreate
		if err := a.Decode(&req); err != nil {
			return nil, err
		}
		return c.CreateToken(ctx, req)
	})
	c.HandleAdmin(protocol.AdminTokenList, func(ctx context.Context, _ *AdminCall) (any, error) { return c.tokens.list(ctx) })
	c.HandleAdmin(protocol.AdminTokenRevoke, func(ctx context.Context, a *AdminCall) (any, error) {
		var req protocol.TokenRevoke
		if err := a.Decode(&req); err != nil {
			return nil, err
		}
		return nil, c.tokens.revoke(ctx, req.ID)
	})
	c.HandleAdmin(protocol.AdminExec, c.adminExec)
	c.HandleAdmin(protocol.AdminLogs, c.adminLogs)
}

// Select resolves a selector against the inventory, sorted by name. Unknown
// names are an error: a typo must not silently shrink the target set.
func (c *Controller) Select(sel protocol.Selector) ([]protocol.NodeInfo, error) {
	all := c.inv.list()
	byName := map[string]protocol.NodeInfo{}
	for _, n := range all {
		byName[n.Name] = n
	}
	var out []protocol.NodeInfo
	switch {
	case sel.All:
		out = all
	case len(sel.Names) > 0:
		seen := map[string]bool{}
		for _, name := range sel.Names {
			if seen[name] {
				continue
			}
			seen[name] = true
			n, ok := byName[name]
			if !ok {
				return nil, fmt.Errorf("no node named %q: see `flotilla nodes`", name)
			}
			out = append(out, n)
		}
	case len(sel.Labels) > 0:
		for _, n := range all {
			match := true
			for k, v := range sel.Labels {
				if n.Labels[k] != v {
					match = false
					break
				}
			}
			if match {
				out = append(out, n)
			}
		}
	default:
		return nil, errors.New("no nodes selected: the selector sets neither all, names nor labels")
	}
	if len(out) == 0 && len(all) == 0 {
		return nil, errors.New("no node has joined yet: create a token with `flotilla token create` and start agents with it")
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no node has the labels %s: see `flotilla nodes`", formatLabels(sel.Labels))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

func (c *Controller) adminExec(ctx context.Context, a *AdminCall) (any, error) {
	var req protocol.ExecRequest
	if err := a.Decode(&req); err != nil {
		return nil, err
	}
	if len(req.Command) == 0 {
		return nil, errors.New("exec: no command given")
	}
	if req.Timeout <= 0 {
		req.Timeout = 30 * time.Second
	}
	nodes, err := c.Select(req.Selector)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	defer func() { c.metrics.ExecFanout.Observe(time.Since(start).Seconds()) }()
	results := make([]protocol.ExecNodeResult, len(nodes))
	var wg sync.WaitGroup
	var sendMu sync.Mutex
	for i, n := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = c.execOne(ctx, n, req, func(ev protocol.Event) {
				if ev.Type == protocol.EventOutput {
					sendMu.Lock()
					_ = a.Send(ev)
					sendMu.Unlock()
				}
			})
		}()
	}
	wg.Wait()
	return protocol.ExecReply{Results: results}, nil
}

func (c *Controller) execOne(ctx context.Context, n protocol.NodeInfo, req protocol.ExecRequest, onEvent func(protocol.Event)) (res protocol.ExecNodeResult) {
	res = protocol.ExecNodeResult{Node: n.Name, ExitCode: -1}
	start := time.Now()
	defer func() { res.Duration = time.Since(start) }()
	if !n.Online {
		res.Error = "offline"
		if !n.LastSeen.IsZero() {
			res.Error = fmt.Sprintf("offline (last seen %s ago)", time.Since(n.LastSeen).Round(time.Second))
		}
		return res
	}
	task := &protocol.Task{Node: n.Name, Steps: []protocol.Step{{Name: "exec", Kind: "exec", Command: req.Command, Timeout: req.Timeout}}}
	run, err := c.Dispatch(ctx, task, onEvent)
	if err != nil {
		res.Error = err.Error()
		return res
	}
	wctx, cancel := context.WithTimeout(ctx, req.Timeout+10*time.Second)
	defer cancel()
	tr, err := run.Wait(wctx)
	if err != nil {
		res.Error = err.Error()
		res.TimedOut = errors.Is(err, context.DeadlineExceeded)
		return res
	}
	res.OK, res.ExitCode, res.TimedOut, res.Error = tr.OK, tr.ExitCode, tr.TimedOut, tr.Error
	return res
}

func formatLabels(l map[string]string) string {
	parts := make([]string, 0, len(l))
	for k, v := range l {
		parts = append(parts, k+"="+v)
	}
	sort.Strings(parts)
	return strings.Join(parts, ",")
}
