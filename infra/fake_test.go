package infra

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/flotilla-dev/flotilla/controller/clusterfile"
	"github.com/flotilla-dev/flotilla/protocol"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// fakeProvider is an infrastructure in memory: machines by name, with counts of
// what was asked and injectable failures.
type fakeProvider struct {
	mu        sync.Mutex
	machines  map[string]fakeMachine
	creations map[string]int // machines really made, per name (a duplicate shows as 2)
	calls     map[string]int // "create"/"list"/"destroy" calls
	failNext  map[string]int // name -> transient Create failures left
	lostReply map[string]int // name -> Creates that make the machine but answer with an error
	permanent map[string]bool
	delay     time.Duration
	inflight  int
	maxFlight int
	nextID    int
}

type fakeMachine struct {
	m        Machine
	userData []byte
}

func newFakeProvider() *fakeProvider {
	return &fakeProvider{machines: map[string]fakeMachine{}, creations: map[string]int{}, calls: map[string]int{},
		failNext: map[string]int{}, lostReply: map[string]int{}, permanent: map[string]bool{}}
}

func (p *fakeProvider) enter(op string) func() {
	p.mu.Lock()
	p.calls[op]++
	p.inflight++
	p.maxFlight = max(p.maxFlight, p.inflight)
	d := p.delay
	p.mu.Unlock()
	if d > 0 {
		time.Sleep(d) // the fake provider's call takes time, as a cloud API's does
	}
	return func() { p.mu.Lock(); p.inflight--; p.mu.Unlock() }
}

func (p *fakeProvider) Create(ctx context.Context, s MachineSpec) (Machine, error) {
	defer p.enter("create")()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.permanent[s.Name] {
		return Machine{}, Permanent(fmt.Errorf("quota exceeded for %s", s.Name))
	}
	if p.failNext[s.Name] > 0 {
		p.failNext[s.Name]--
		return Machine{}, errors.New("API throttled")
	}
	fm, ok := p.machines[s.Name]
	if !ok || fm.m.Cluster != s.Cluster {
		p.nextID++
		fm = fakeMachine{m: Machine{Name: s.Name, Cluster: s.Cluster, Role: s.Role, ID: fmt.Sprintf("i-%d", p.nextID),
			IP: fmt.Sprintf("10.0.0.%d", p.nextID)}, userData: s.UserData}
		p.machines[s.Name] = fm
		p.creations[s.Name]++
	}
	if p.lostReply[s.Name] > 0 {
		p.lostReply[s.Name]--
		return Machine{}, errors.New("connection reset (the machine was made)")
	}
	return fm.m, nil
}

func (p *fakeProvider) List(ctx context.Context, cluster string) ([]Machine, error) {
	defer p.enter("list")()
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []Machine
	for _, fm := range p.machines {
		if fm.m.Cluster == cluster {
			out = append(out, fm.m)
		}
	}
	return out, nil
}

func (p *fakeProvider) Destroy(ctx context.Context, m Machine) error {
	defer p.enter("destroy")()
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.machines, m.Name)
	return nil
}

func (p *fakeProvider) names() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []string
	for n := range p.machines {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// fakeController is the inventory and token store; while joining is on,
// every provider machine whose user data holds a good token joins (as an
// agent would on first boot).
type fakeController struct {
	mu      sync.Mutex
	p       *fakeProvider
	joining bool
	nodes   map[string]protocol.NodeInfo
	tokens  map[string]fakeToken
	nextTok int
	removed []string
}

type fakeToken struct {
	req    protocol.TokenCreate
	secret string
	uses   int
}

func newFakeController(p *fakeProvider) *fakeController {
	return &fakeController{p: p, joining: true, nodes: map[string]protocol.NodeInfo{}, tokens: map[string]fakeToken{}}
}

var tokenRE = regexp.MustCompile(`--token '?([0-9a-f]+)\.([0-9a-z]+)'?`)

func (c *fakeController) Nodes(ctx context.Context) ([]protocol.NodeInfo, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.joining {
		c.p.mu.Lock()
		for name, fm := range c.p.machines {
			if _, in := c.nodes[name]; in {
				continue
			}
			m := tokenRE.FindSubmatch(fm.userData)
			if m == nil {
				continue
			}
			t, ok := c.tokens[string(m[1])]
			if !ok || t.secret != string(m[2]) || t.uses >= t.req.Uses || t.req.For != name {
				continue
			}
			t.uses++
			c.tokens[string(m[1])] = t
			c.nodes[name] = protocol.NodeInfo{Name: name, Online: true, Labels: t.req.Labels}
		}
		c.p.mu.Unlock()
	}
	var out []protocol.NodeInfo
	for _, n := range c.nodes {
		out = append(out, n)
	}
	return out, nil
}

func (c *fakeController) CreateToken(ctx context.Context, req protocol.TokenCreate) (protocol.TokenInfo, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.nextTok++
	id := fmt.Sprintf("%08x", c.nextTok)
	secret := fmt.Sprintf("s%d", c.nextTok)
	c.tokens[id] = fakeToken{req: req, secret: secret}
	return protocol.TokenInfo{ID: id, Token: id + "." + secret, CAHash: "sha256:ab", JoinURL: "https://10.0.0.1:9443"}, nil
}

func (c *fakeController) RevokeToken(ctx context.Context, id string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.tokens, id)
	return nil
}

func (c *fakeController) RemoveNode(ctx context.Context, name string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.nodes[name]; !ok {
		return fmt.Errorf("no node named %q", name)
	}
	delete(c.nodes, name)
	c.removed = append(c.removed, name)
	return nil
}

func (c *fakeController) setJoining(on bool) {
	c.mu.Lock()
	c.joining = on
	c.mu.Unlock()
}

func (c *fakeController) tokenCount() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.tokens)
}

// natsKV is a real JetStream in a temp dir; restart() stops and starts the
// server on the same store, as a controller restart does.
type natsKV struct {
	t   *testing.T
	dir string
	ns  *server.Server
	nc  *nats.Conn
	js  jetstream.JetStream
}

func startJetStream(t *testing.T) *natsKV {
	t.Helper()
	k := &natsKV{t: t, dir: t.TempDir()}
	k.start()
	t.Cleanup(k.stop)
	return k
}

func (k *natsKV) start() {
	k.t.Helper()
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: k.dir, NoLog: true, NoSigs: true})
	if err != nil {
		k.t.Fatal(err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		k.t.Fatal("nats not ready")
	}
	nc, err := nats.Connect("", nats.InProcessServer(ns))
	if err != nil {
		k.t.Fatal(err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		k.t.Fatal(err)
	}
	k.ns, k.nc, k.js = ns, nc, js
}

func (k *natsKV) stop() {
	if k.nc != nil {
		k.nc.Close()
		k.nc = nil
	}
	if k.ns != nil {
		k.ns.Shutdown()
		k.ns.WaitForShutdown()
		k.ns = nil
	}
}

func (k *natsKV) restart() { k.stop(); k.start() }

// cluster parses a Clusterfile with spec.infra on provider "fake".
func cluster(t *testing.T, roles string) *clusterfile.Cluster {
	t.Helper()
	doc := "apiVersion: flotilla.dev/v1\nkind: Cluster\nmetadata: {name: demo}\nspec:\n  image: img\n  infra:\n    provider: fake\n    roles: " + roles + "\n"
	f, err := clusterfile.Parse("Clusterfile", []byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	return &f.Cluster
}

// fastOptions keep tests short: small back-off, short waits.
func fastOptions(p Provider) Options {
	return Options{Providers: map[string]Provider{"fake": p}, Backoff: Backoff{Initial: time.Millisecond, Max: 4 * time.Millisecond, Attempts: 4},
		CallTimeout: 5 * time.Second, JoinTimeout: 5 * time.Second, PollInterval: 5 * time.Millisecond,
		Logger: slog.New(slog.DiscardHandler)}
}

func newDriver(t *testing.T, k *natsKV, c Controller, o Options) *Driver {
	t.Helper()
	d, err := New(context.Background(), k.js, c, o)
	if err != nil {
		t.Fatal(err)
	}
	return d
}
