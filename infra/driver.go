package infra

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/flotilla-dev/flotilla/controller/clusterfile"
	"github.com/flotilla-dev/flotilla/controller/planner"
	"github.com/flotilla-dev/flotilla/protocol"
	"github.com/nats-io/nats.go/jetstream"
)

// Controller is what the Driver needs from the control plane
// (*controller.Controller has it): the inventory and join tokens.
type Controller interface {
	Nodes(ctx context.Context) ([]protocol.NodeInfo, error)
	CreateToken(ctx context.Context, req protocol.TokenCreate) (protocol.TokenInfo, error)
	RevokeToken(ctx context.Context, id string) error
	RemoveNode(ctx context.Context, name string) error
}

// Options tune a Driver. Zero values take the documented defaults.
type Options struct {
	// Providers by the name spec.infra.provider gives.
	Providers map[string]Provider
	// MaxConcurrent bounds provider calls in flight (default DefaultMaxConcurrent).
	MaxConcurrent int
	// Backoff is the retry policy of provider calls (default DefaultBackoff).
	Backoff Backoff
	// CallTimeout bounds one provider call (default DefaultCallTimeout).
	CallTimeout time.Duration
	// JoinTimeout bounds the wait for new machines' agents (default DefaultJoinTimeout).
	JoinTimeout time.Duration
	// TokenTTL is the life of a machine's join token (default DefaultTokenTTL). A
	// machine that has not joined when its tokens expired is destroyed and made again.
	TokenTTL time.Duration
	// PollInterval is how often the inventory is read while waiting (default 250ms).
	PollInterval time.Duration
	Logger       *slog.Logger
}

// Driver makes the machines of spec.infra exist and join, and destroys them
// when they are no longer wanted. Safe for concurrent use; one cluster's calls
// are serialised.
type Driver struct {
	ctrl  Controller
	opts  Options
	store *store
	call  *caller
	log   *slog.Logger

	mu    sync.Mutex
	locks map[string]*sync.Mutex
}

// New opens the Driver's KV bucket in js.
func New(ctx context.Context, js jetstream.JetStream, ctrl Controller, opts Options) (*Driver, error) {
	if js == nil || ctrl == nil {
		return nil, errors.New("infra driver: needs JetStream and a controller")
	}
	if opts.MaxConcurrent <= 0 {
		opts.MaxConcurrent = DefaultMaxConcurrent
	}
	opts.Backoff = opts.Backoff.withDefaults()
	if opts.CallTimeout <= 0 {
		opts.CallTimeout = DefaultCallTimeout
	}
	if opts.JoinTimeout <= 0 {
		opts.JoinTimeout = DefaultJoinTimeout
	}
	if opts.TokenTTL <= 0 {
		opts.TokenTTL = DefaultTokenTTL
	}
	if opts.PollInterval <= 0 {
		opts.PollInterval = 250 * time.Millisecond
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	st, err := openStore(ctx, js)
	if err != nil {
		return nil, err
	}
	d := &Driver{ctrl: ctrl, opts: opts, store: st, log: opts.Logger.With("component", "infra"), locks: map[string]*sync.Mutex{}}
	d.call = newCaller(opts.MaxConcurrent, opts.Backoff, opts.CallTimeout)
	d.call.onRetry = func(op string, attempt int, wait time.Duration, err error) {
		d.log.Warn("provider call failed; retrying", "op", op, "attempt", attempt, "wait", wait.Round(time.Millisecond), "err", err)
	}
	return d, nil
}

// Providers lists the provider names this Driver has.
func (d *Driver) Providers() []string { return slices.Sorted(maps.Keys(d.opts.Providers)) }

func (d *Driver) lockCluster(name string) func() {
	d.mu.Lock()
	l := d.locks[name]
	if l == nil {
		l = &sync.Mutex{}
		d.locks[name] = l
	}
	d.mu.Unlock()
	l.Lock()
	return l.Unlock
}

func (d *Driver) provider(c *clusterfile.Cluster) (Provider, error) {
	p := d.opts.Providers[c.Infra.Provider]
	if p == nil {
		have := "none"
		if len(d.opts.Providers) > 0 {
			have = strings.Join(d.Providers(), ", ")
		}
		return nil, &clusterfile.FieldError{File: c.File(), Line: c.Infra.Line, Field: "spec.infra.provider",
			Msg: fmt.Sprintf("this controller has no provider %q (it has: %s); start it with --infra-sandbox FLEET for the sandbox", c.Infra.Provider, have)}
	}
	return p, nil
}

// Machines returns the records of the cluster's machines ("" for every cluster).
func (d *Driver) Machines(ctx context.Context, cluster string) ([]Record, error) {
	recs, err := d.store.list(ctx, cluster)
	if err != nil {
		return nil, err
	}
	out := make([]Record, len(recs))
	for i, r := range recs {
		out[i] = *r
	}
	return out, nil
}

// MachineNames lists the names of the cluster's machines.
func (d *Driver) MachineNames(ctx context.Context, cluster string) ([]string, error) {
	recs, err := d.store.list(ctx, cluster)
	if err != nil {
		return nil, err
	}
	out := make([]string, len(recs))
	for i, r := range recs {
		out[i] = r.Name
	}
	return out, nil
}

// Provide makes every machine c's spec.infra asks for exist (creating the
// missing ones, adopting tagged ones it has no record of, finishing what an
// interrupted apply left) and waits until each one's agent is online. It
// destroys nothing the cluster still wants; machines beyond the counts are left
// to Release, after the rollout undid the image on them. progress gets one
// line per machine event.
func (d *Driver) Provide(ctx context.Context, c *clusterfile.Cluster, progress func(string)) error {
	if c.Infra == nil {
		return nil
	}
	progress = serialized(progress)
	p, err := d.provider(c)
	if err != nil {
		return err
	}
	defer d.lockCluster(c.Name)()
	start := time.Now()
	recs, err := d.reconcile(ctx, c.Name, c.Infra.Provider, p, progress)
	if err != nil {
		return err
	}
	online, err := d.online(ctx)
	if err != nil {
		return err
	}
	want := c.Machines()
	var todo []clusterfile.Machine
	for _, w := range want {
		r := recs[w.Name]
		switch {
		case r == nil, r.State == StateCreating:
			todo = append(todo, w) // new, or a create whose outcome is unknown: Create is idempotent
		case r.State == StateDestroying:
			if err := d.destroy(ctx, p, r, progress); err != nil {
				return err
			}
			delete(recs, w.Name)
			todo = append(todo, w)
		case r.State == StateCreated && !online[w.Name] && time.Since(r.Created) > d.opts.TokenTTL:
			progress(fmt.Sprintf("machine %s never joined and its join token expired: making it again", w.Name))
			if err := d.destroy(ctx, p, r, progress); err != nil {
				return err
			}
			delete(recs, w.Name)
			todo = append(todo, w)
		case r.State == StateCreated && !online[w.Name]:
			// Made but not joined (the controller stopped in between, perhaps in
			// the middle of the provider's work): Create again is idempotent and
			// completes it; the user data it already has is kept.
			todo = append(todo, w)
		}
	}
	if len(todo) > 0 {
		names := make([]string, len(todo))
		for i, w := range todo {
			names[i] = w.Name
		}
		progress(fmt.Sprintf("creating %d machine(s) on %s: %s", len(todo), c.Infra.Provider, strings.Join(names, ", ")))
	}
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	for _, w := range todo {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, err := d.create(ctx, c, p, w, recs[w.Name], progress)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, err)
				return
			}
			recs[w.Name] = r
		}()
	}
	wg.Wait()
	if len(errs) > 0 {
		return fmt.Errorf("cluster %s: %w (apply again to resume: machines made so far are kept and reused)", c.Name, errors.Join(errs...))
	}
	if err := d.waitJoined(ctx, c.Name, want, recs, progress); err != nil {
		return err
	}
	if len(todo) > 0 {
		progress(fmt.Sprintf("%d machine(s) of %s created and joined in %s", len(todo), c.Name, time.Since(start).Round(100*time.Millisecond)))
	}
	return nil
}

// reconcile reads the cluster's records and the provider's machines with
// the cluster tag: a tagged machine without a record (a create whose record
// was lost) is adopted, so that it is either used or destroyed, never leaked.
func (d *Driver) reconcile(ctx context.Context, cluster, providerName string, p Provider, progress func(string)) (map[string]*Record, error) {
	rs, err := d.store.list(ctx, cluster)
	if err != nil {
		return nil, err
	}
	recs := map[string]*Record{}
	for _, r := range rs {
		recs[r.Name] = r
	}
	var listed []Machine
	if err := d.call.do(ctx, "list machines of cluster "+cluster, func(ctx context.Context) error {
		var err error
		listed, err = p.List(ctx, cluster)
		return err
	}); err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	for _, m := range listed {
		if m.Cluster != cluster || protocol.ValidateNodeName(m.Name) != nil {
			continue // a provider that filters badly: not ours to touch
		}
		seen[m.Name] = true
		r := recs[m.Name]
		switch {
		case r == nil:
			r = &Record{Cluster: cluster, Name: m.Name, Role: m.Role, Provider: providerName, State: StateCreated, Machine: m, Created: time.Now().UTC()}
			if err := d.store.put(ctx, r); err != nil {
				return nil, err
			}
			recs[m.Name] = r
			d.log.Warn("adopted a machine with the cluster's tag that had no record", "cluster", cluster, "machine", m.Name, "id", m.ID)
			progress(fmt.Sprintf("machine %s exists without a record (an interrupted create): adopted", m.Name))
		case r.State == StateCreating:
			r.State, r.Machine = StateCreated, m
			if err := d.store.put(ctx, r); err != nil {
				return nil, err
			}
		}
	}
	for name, r := range recs {
		if seen[name] || r.State == StateCreating || r.Provider != providerName {
			continue
		}
		// Recorded as made, but the provider no longer has it (destroyed outside flotilla).
		d.log.Warn("machine recorded but gone from the provider", "cluster", cluster, "machine", name, "state", r.State)
		progress(fmt.Sprintf("machine %s is gone from %s: it is made again if still wanted", name, providerName))
		d.forgetMachine(ctx, r)
		if err := d.store.delete(ctx, cluster, name); err != nil {
			return nil, err
		}
		delete(recs, name)
	}
	return recs, nil
}

// create records the intent and the machine's join token, then asks the
// provider; the record says "created" only once the provider answered.
func (d *Driver) create(ctx context.Context, c *clusterfile.Cluster, p Provider, w clusterfile.Machine, r *Record, progress func(string)) (*Record, error) {
	t0 := time.Now()
	if r == nil {
		r = &Record{Cluster: c.Name, Name: w.Name, Role: w.Role, Provider: c.Infra.Provider, CPUs: w.CPUs, Memory: w.Memory, Created: time.Now().UTC()}
	}
	tctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	ti, err := d.ctrl.CreateToken(tctx, protocol.TokenCreate{TTL: d.opts.TokenTTL, Uses: 1, For: w.Name,
		Description: "flotilla infra: machine " + w.Name, Labels: map[string]string{ClusterTag: c.Name, RoleTag: w.Role}})
	cancel()
	if err != nil {
		return nil, fmt.Errorf("machine %s: join token: %w", w.Name, err)
	}
	r.State = StateCreating
	r.Tokens = append(r.Tokens, ti.ID)
	if err := d.store.put(ctx, r); err != nil {
		_ = d.ctrl.RevokeToken(context.WithoutCancel(ctx), ti.ID)
		return nil, err
	}
	spec := MachineSpec{Name: w.Name, Cluster: c.Name, Role: w.Role, CPUs: w.CPUs, MemoryBytes: w.Memory, UserData: UserData(ti, w.Name)}
	var m Machine
	err = d.call.do(ctx, "create machine "+w.Name, func(ctx context.Context) error {
		var err error
		m, err = p.Create(ctx, spec)
		return err
	})
	if err != nil {
		return nil, err
	}
	if m.Name == "" {
		m.Name = w.Name
	}
	m.Cluster = c.Name
	r.Machine, r.State = m, StateCreated
	if err := d.store.put(ctx, r); err != nil {
		return nil, err
	}
	d.log.Info("machine created", "cluster", c.Name, "machine", w.Name, "id", m.ID, "ip", m.IP, "took", time.Since(t0).Round(time.Millisecond))
	progress(fmt.Sprintf("machine %s created (%s) in %s", w.Name, m.IP, time.Since(t0).Round(100*time.Millisecond)))
	return r, nil
}

// UserData is a machine's first-boot script: the bootstrap one-liner
// (controller.BootstrapOneLiner's verified form: the CA fetched and checked
// against its hash, then bootstrap.sh over TLS with that CA) with the
// machine's own token and name, every value shell-quoted.
func UserData(ti protocol.TokenInfo, name string) []byte {
	q := planner.ShellQuote
	url := strings.TrimRight(ti.JoinURL, "/")
	hexHash := strings.TrimPrefix(ti.CAHash, "sha256:")
	return []byte("#!/bin/sh\n# flotilla: join the controller as " + q(name) + " (first boot)\nset -e\n" +
		"f=$(mktemp)\ntrap 'rm -f \"$f\"' EXIT\n" +
		"curl -fsSLk -o \"$f\" " + q(url+"/v1/ca.crt") + "\n" +
		"echo " + q(hexHash+"  ") + "\"$f\" | sha256sum -c -\n" +
		"curl -fsSL --cacert \"$f\" -w '%{onerror}\\nexit 1\\n' " + q(url+"/bootstrap.sh") +
		" | sh -s -- --token " + q(ti.Token) + " --ca-hash " + q(ti.CAHash) + " --ca-file \"$f\" --name " + q(name) + "\n")
}

// online maps node name to online, for nodes whose admin-set cluster label says
// which cluster they joined for (a node is only taken for a machine if it
// joined with that machine's token).
func (d *Driver) online(ctx context.Context) (map[string]bool, error) {
	nodes, err := d.nodes(ctx)
	if err != nil {
		return nil, err
	}
	out := map[string]bool{}
	for _, n := range nodes {
		out[n.Name] = n.Online
	}
	return out, nil
}

func (d *Driver) nodes(ctx context.Context) ([]protocol.NodeInfo, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	nodes, err := d.ctrl.Nodes(ctx)
	if err != nil {
		return nil, fmt.Errorf("node inventory: %w", err)
	}
	return nodes, nil
}

// waitJoined waits (at most JoinTimeout) until every wanted machine's agent
// is online with the cluster's label, then marks it joined and revokes its tokens.
func (d *Driver) waitJoined(ctx context.Context, cluster string, want []clusterfile.Machine, recs map[string]*Record, progress func(string)) error {
	pending := map[string]*Record{}
	for _, w := range want {
		if r := recs[w.Name]; r != nil && r.State != StateJoined {
			pending[w.Name] = r
		}
	}
	if len(pending) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, d.opts.JoinTimeout)
	defer cancel()
	t0 := time.Now()
	tick := time.NewTicker(d.opts.PollInterval)
	defer tick.Stop()
	impostor := map[string]bool{}
	for {
		nodes, err := d.nodes(ctx)
		if err != nil && ctx.Err() == nil {
			d.log.Warn("read inventory while waiting for machines", "err", err)
		}
		for _, n := range nodes {
			r := pending[n.Name]
			if r == nil || !n.Online {
				continue
			}
			if n.Labels[ClusterTag] != cluster {
				if !impostor[n.Name] {
					impostor[n.Name] = true
					d.log.Warn("a node has the name of a machine of this cluster but did not join with its token; waiting for the machine", "cluster", cluster, "node", n.Name)
				}
				continue
			}
			r.State = StateJoined
			for _, id := range r.Tokens {
				if err := d.ctrl.RevokeToken(ctx, id); err != nil {
					d.log.Warn("revoke a joined machine's token", "machine", r.Name, "token", id, "err", err)
				}
			}
			r.Tokens = nil
			if err := d.store.put(ctx, r); err != nil {
				return err
			}
			delete(pending, n.Name)
			progress(fmt.Sprintf("machine %s joined (%s after the wait began)", n.Name, time.Since(t0).Round(100*time.Millisecond)))
		}
		if len(pending) == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			names := slices.Sorted(maps.Keys(pending))
			why := ""
			for _, n := range names {
				if impostor[n] {
					why = fmt.Sprintf("; node %s is in the inventory but did not join with its machine's token: remove it (flotilla nodes remove %s)", n, n)
				}
			}
			return fmt.Errorf("cluster %s: machine(s) %s not online within %s (%w)%s; their first boot runs the bootstrap one-liner until it succeeds: apply again to keep waiting (a machine whose token expired is made again)",
				cluster, strings.Join(names, ", "), d.opts.JoinTimeout, ctx.Err(), why)
		case <-tick.C:
		}
	}
}

// Release destroys the cluster's machines for which keep returns false (all
// of them for a nil keep): the record says "destroying" first, then the
// provider destroys the machine, the node leaves the inventory (its
// credentials revoked), its tokens are revoked and the record is deleted.
// Machines with the cluster's tag that have no record are included.
func (d *Driver) Release(ctx context.Context, cluster string, keep func(name string) bool, progress func(string)) error {
	progress = serialized(progress)
	if keep == nil {
		keep = func(string) bool { return false }
	}
	defer d.lockCluster(cluster)()
	rs, err := d.store.list(ctx, cluster)
	if err != nil {
		return err
	}
	recs := map[string]*Record{}
	providers := map[string]bool{}
	for _, r := range rs {
		recs[r.Name] = r
		providers[r.Provider] = true
	}
	if len(recs) == 0 {
		return nil // never had machines: nothing to list anywhere
	}
	for name := range providers {
		p := d.opts.Providers[name]
		if p == nil {
			return fmt.Errorf("cluster %s has machines on provider %q, which this controller does not have: start it with that provider to destroy them", cluster, name)
		}
		if _, err := d.reconcile(ctx, cluster, name, p, progress); err != nil {
			return err
		}
	}
	if rs, err = d.store.list(ctx, cluster); err != nil {
		return err
	}
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
		n    int
	)
	for _, r := range rs {
		if keep(r.Name) {
			continue
		}
		n++
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := d.destroy(ctx, d.opts.Providers[r.Provider], r, progress); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if len(errs) > 0 {
		return fmt.Errorf("cluster %s: %w (apply or delete again to finish: the records say what is left)", cluster, errors.Join(errs...))
	}
	if n > 0 {
		d.log.Info("machines destroyed", "cluster", cluster, "count", n)
	}
	return nil
}

// serialized makes progress safe to call from the goroutines of one call
// (it is called one line at a time); nil becomes a no-op.
func serialized(progress func(string)) func(string) {
	if progress == nil {
		return func(string) {}
	}
	var mu sync.Mutex
	return func(l string) {
		mu.Lock()
		defer mu.Unlock()
		progress(l)
	}
}

func (d *Driver) destroy(ctx context.Context, p Provider, r *Record, progress func(string)) error {
	t0 := time.Now()
	r.State = StateDestroying
	if err := d.store.put(ctx, r); err != nil {
		return err
	}
	m := r.Machine
	if m.Name == "" {
		m = Machine{Name: r.Name, Cluster: r.Cluster, Role: r.Role}
	}
	if err := d.call.do(ctx, "destroy machine "+r.Name, func(ctx context.Context) error { return p.Destroy(ctx, m) }); err != nil {
		return err
	}
	d.forgetMachine(ctx, r)
	if err := d.store.delete(ctx, r.Cluster, r.Name); err != nil {
		return err
	}
	d.log.Info("machine destroyed", "cluster", r.Cluster, "machine", r.Name, "took", time.Since(t0).Round(time.Millisecond))
	progress(fmt.Sprintf("machine %s destroyed", r.Name))
	return nil
}

// forgetMachine removes what the control plane holds for a machine that is
// gone: its node (credentials revoked) and its join tokens.
func (d *Driver) forgetMachine(ctx context.Context, r *Record) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	if nodes, err := d.ctrl.Nodes(ctx); err == nil {
		for _, n := range nodes {
			// Only the node that joined for this cluster: a same-named node
			// that joined otherwise is the admin's to remove.
			if n.Name == r.Name && n.Labels[ClusterTag] == r.Cluster {
				if err := d.ctrl.RemoveNode(ctx, n.Name); err != nil {
					d.log.Warn("remove a destroyed machine's node", "machine", r.Name, "err", err)
				}
			}
		}
	}
	for _, id := range r.Tokens {
		if err := d.ctrl.RevokeToken(ctx, id); err != nil {
			d.log.Warn("revoke a destroyed machine's token", "machine", r.Name, "token", id, "err", err)
		}
	}
	r.Tokens = nil
}
