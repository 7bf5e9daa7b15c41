package clustertest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flotilla-dev/flotilla/client"
	"github.com/flotilla-dev/flotilla/controller/controllertest"
	"github.com/flotilla-dev/flotilla/protocol"
)

// haRequest is one admin request of every kind the CLI sends. once marks
// the requests the client does not send twice (exec runs a command, a token
// is created): when the controller handling one dies, the client says so
// (client.ErrControllerLost) instead of sending it to the next leader.
type haRequest struct {
	name string
	once bool
	do   func(ctx context.Context, c *client.Client) error
}

func haRequests(cf []byte, nodes []string) []haRequest {
	return []haRequest{
		{protocol.AdminNodes, false, func(ctx context.Context, c *client.Client) error {
			got, err := c.Nodes(ctx)
			if err == nil && len(got) != len(nodes) {
				err = fmt.Errorf("%d nodes, want %d", len(got), len(nodes))
			}
			return err
		}},
		{protocol.AdminController, false, func(ctx context.Context, c *client.Client) error {
			info, err := c.Controller(ctx)
			if err == nil && (!info.HA || info.LeaderSince.IsZero()) {
				err = fmt.Errorf("controller info %+v: want HA with a leader-since time", info)
			}
			return err
		}},
		{protocol.AdminTokenCreate + "+" + protocol.AdminTokenRevoke, true, func(ctx context.Context, c *client.Client) error {
			ti, err := c.CreateToken(ctx, protocol.TokenCreate{TTL: time.Minute, Uses: 1})
			if err != nil {
				return err
			}
			return c.RevokeToken(ctx, ti.ID)
		}},
		{protocol.AdminTokenList, false, func(ctx context.Context, c *client.Client) error { _, err := c.Tokens(ctx); return err }},
		{protocol.AdminExec, true, func(ctx context.Context, c *client.Client) error {
			rep, err := c.Exec(ctx, protocol.ExecRequest{Selector: protocol.Selector{All: true}, Command: []string{"true"}, Timeout: 30 * time.Second}, nil)
			if err == nil && len(rep.Results) != len(nodes) {
				err = fmt.Errorf("exec: %d results, want %d", len(rep.Results), len(nodes))
			}
			return err
		}},
		{protocol.AdminLogs, false, func(ctx context.Context, c *client.Client) error {
			_, err := c.Logs(ctx, protocol.LogsRequest{Node: nodes[0], Limit: 5})
			return err
		}},
		{protocol.AdminNodesLabel, false, func(ctx context.Context, c *client.Client) error {
			_, err := c.LabelNode(ctx, protocol.NodesLabel{Name: nodes[0], Set: map[string]string{"ha-test": "yes"}})
			return err
		}},
		{protocol.AdminPlan, false, func(ctx context.Context, c *client.Client) error {
			_, err := c.Plan(ctx, protocol.ApplyRequest{Clusterfile: cf, Path: "Clusterfile"})
			return err
		}},
		{protocol.AdminStatus, false, func(ctx context.Context, c *client.Client) error { _, err := c.Status(ctx, ""); return err }},
	}
}

// TestHAAdminRequests sends every kind of admin request many times to a
// leader + standby pair, then again without pause while the leader is killed
// and the standby takes over, and at the new leader while it starts: every
// one must succeed (a request that finds no leader waits for one). Before,
// a controller that had just taken the lease answered "unknown admin
// request" for the rollout requests until its engine was up.
func TestHAAdminRequests(t *testing.T) {
	store := t.TempDir()
	t.Setenv("FLOTILLA_STORE", store)
	nc := startNATSCluster(t, nil)
	leader := controllertest.StartExternal(t, append(append([]string{}, nc.args...), "--ha", "--lease-ttl", "3s")...)
	standby := controllertest.StartStandby(leader)
	waitLog(t, standby.Controller, "standby: another controller holds the leader lease", 20*time.Second)
	slowImage(t, leader.Bin, store, 1)
	names := []string{"q1", "q2"}
	for _, n := range names {
		leader.StartAgent(n)
	}
	leader.WaitOnline(60*time.Second, true, names...)
	cfPath := clusterfile(t, names)
	cf, err := os.ReadFile(cfPath)
	if err != nil {
		t.Fatal(err)
	}
	reqs := haRequests(cf, names)
	c, err := leader.Client()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()

	const rounds = 20
	for i := range rounds {
		for _, r := range reqs {
			if err := r.do(ctx, c); err != nil {
				t.Fatalf("round %d, %s: %v", i, r.name, err)
			}
		}
	}

	// Now the same without pause from four clients while the leader dies.
	var (
		wg     sync.Mutex
		counts = map[string]int{}
		fails  []string
		lost   []string
	)
	stop := make(chan struct{})
	var running sync.WaitGroup
	for w := range 4 {
		running.Add(1)
		go func() {
			defer running.Done()
			wc, err := leader.Client()
			if err != nil {
				t.Error(err)
				return
			}
			defer wc.Close()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				r := reqs[(i+w)%len(reqs)]
				// Each request may wait for the next leader: the lease TTL
				// plus the standby's start.
				rctx, rcancel := context.WithTimeout(ctx, 45*time.Second)
				err := r.do(rctx, wc)
				rcancel()
				wg.Lock()
				counts[r.name]++
				switch {
				case err == nil:
				case r.once && errors.Is(err, client.ErrControllerLost):
					lost = append(lost, fmt.Sprintf("%s: %v", r.name, err))
				default:
					fails = append(fails, fmt.Sprintf("%s: %v", r.name, err))
				}
				wg.Unlock()
			}
		}()
	}
	time.Sleep(time.Second) // requests under way at the leader
	killed := time.Now()
	leader.KillController()
	waitLog(t, standby.Controller, "serving admin requests", 30*time.Second)
	t.Logf("the standby serves %.1fs after the leader was killed", time.Since(killed).Seconds())
	time.Sleep(2 * time.Second) // and requests go on at the new leader
	close(stop)
	running.Wait()
	total := 0
	for _, n := range counts {
		total += n
	}
	t.Logf("%d requests across the failover: %v", total, counts)
	if len(lost) > 0 {
		t.Logf("%d requests sent once were in flight at the kill and said so:\n%s", len(lost), strings.Join(lost, "\n"))
	}
	if len(lost) > 4 {
		t.Errorf("%d requests lost with the controller; at most one per client can be in flight at the kill", len(lost))
	}
	if len(fails) > 0 {
		t.Errorf("%d of %d requests failed across the failover:\n%s", len(fails), total, strings.Join(fails, "\n"))
	}
	for _, r := range reqs {
		if counts[r.name] == 0 {
			t.Errorf("no %s request was sent across the failover", r.name)
		}
	}
	// And the apply, at the new leader.
	out, errOut, code := leader.CLI(ctx, "apply", "-f", cfPath)
	if code != 0 {
		t.Fatalf("apply at the new leader: exit %d\nstdout:\n%s\nstderr:\n%s", code, out, errOut)
	}
}
