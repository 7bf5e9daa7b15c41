// Command fleet drives the sandbox fleet by hand: boot nodes, run commands in
// them, kill, reboot, partition and tear them down (see package sandbox).
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/flotilla-dev/flotilla/sandbox"
)

const usage = `usage: go run ./e2e/cmd/fleet [flags] COMMAND [ARGS]

Commands:
  up                     boot the fleet (removes leftovers of the same name first;
                         builds the rootfs with e2e/rootfs.sh if it is missing)
  down                   stop every node and remove everything (also after a crash)
  status [-o json]       list nodes, IPs, PIDs and state
  exec NODE CMD [ARG…]   run a command inside a node (stdin/stdout attached)
  exec-all CMD [ARG…]    run a command in every node at once, output prefixed by node;
                         fails if it fails anywhere
  kill|start|stop|reboot NODE
  partition|heal NODE    take the node's link down / up
  host-ip                print the host side of the bridge (where a controller listens)

Examples:
  sudo go run ./e2e/cmd/fleet -n 5 up
  sudo go run ./e2e/cmd/fleet exec node1 systemctl status
  sudo go run ./e2e/cmd/fleet exec-all sh -c "curl -fsSLk https://10.77.0.1:9443/bootstrap.sh | sh -s -- --token T --ca-hash sha256:H"
  sudo go run ./e2e/cmd/fleet partition node3
  sudo go run ./e2e/cmd/fleet down

Flags:
`

type binds map[string]string

func (b binds) String() string { return fmt.Sprint(map[string]string(b)) }
func (b binds) Set(v string) error {
	host, node, ok := strings.Cut(v, ":")
	if !ok || host == "" || node == "" {
		return fmt.Errorf("want HOSTPATH:NODEPATH, got %q", v)
	}
	b[host] = node
	return nil
}

func main() {
	var (
		o      = sandbox.Options{BindRO: binds{}}
		output string
	)
	flag.StringVar(&o.Name, "name", "flotilla", "fleet name: prefixes bridge, netns and state dir")
	flag.StringVar(&o.Subnet, "subnet", "10.77.0.0/24", "bridge subnet; the host gets the first address")
	flag.IntVar(&o.N, "n", 5, "number of nodes (up)")
	flag.StringVar(&o.Bridge, "bridge", "", "bridge name (default NAME0)")
	flag.Var(binds(o.BindRO), "bind-ro", "HOSTPATH:NODEPATH read-only in every node (repeatable)")
	flag.StringVar(&output, "o", "text", "status output: text or json")
	flag.Usage = func() { fmt.Fprint(os.Stderr, usage); flag.PrintDefaults() }
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o, output, flag.Args()); err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, o sandbox.Options, output string, args []string) error {
	if len(args) == 0 {
		flag.Usage()
		return errors.New("no command given")
	}
	cmd, args := args[0], args[1:]
	switch cmd {
	case "up":
		o.BootTimeout = 90 * time.Second
		if err := ensureRootFS(ctx); err != nil {
			return err
		}
		f, err := sandbox.New(ctx, o)
		if err != nil {
			return err
		}
		return status(f, output)
	case "down":
		return sandbox.Cleanup(o.Name)
	}
	f, err := sandbox.Open(o.Name)
	if err != nil {
		return err
	}
	node := func() (string, error) {
		if len(args) < 1 {
			return "", fmt.Errorf("%s needs a node name", cmd)
		}
		return args[0], nil
	}
	switch cmd {
	case "status":
		return status(f, output)
	case "host-ip":
		fmt.Println(f.HostIP())
		return nil
	case "exec":
		if len(args) < 2 {
			return errors.New("exec needs a node and a command")
		}
		c, err := f.Command(ctx, args[0], args[1:]...)
		if err != nil {
			return err
		}
		c.Stdin, c.Stdout, c.Stderr = os.Stdin, os.Stdout, os.Stderr
		return c.Run()
	case "exec-all":
		if len(args) < 1 {
			return errors.New("exec-all needs a command")
		}
		return execAll(ctx, f, args)
	}
	n, err := node()
	if err != nil {
		return err
	}
	switch cmd {
	case "kill":
		return f.Kill(n)
	case "start":
		return f.Start(ctx, n)
	case "stop":
		return f.Stop(ctx, n)
	case "reboot":
		return f.Reboot(ctx, n)
	case "partition":
		return f.Partition(n)
	case "heal":
		return f.Heal(n)
	}
	return fmt.Errorf("unknown command %q (see -h)", cmd)
}

// execAll runs argv in every node at once and prefixes each output line with
// the node's name.
func execAll(ctx context.Context, f *sandbox.Fleet, argv []string) error {
	var (
		mu     sync.Mutex
		wg     sync.WaitGroup
		failed []string
	)
	width := 0
	for _, n := range f.Nodes() {
		width = max(width, len(n.Name))
	}
	for _, n := range f.Nodes() {
		c, err := f.Command(ctx, n.Name, argv...)
		if err != nil {
			return err
		}
		pr, pw := io.Pipe()
		c.Stdout, c.Stderr = pw, pw
		wg.Add(2)
		go func() {
			defer wg.Done()
			sc := bufio.NewScanner(pr)
			for sc.Scan() {
				mu.Lock()
				fmt.Printf("%-*s | %s\n", width, n.Name, sc.Text())
				mu.Unlock()
			}
		}()
		go func() {
			defer wg.Done()
			err := c.Run()
			pw.Close()
			if err != nil {
				mu.Lock()
				failed = append(failed, fmt.Sprintf("%s (%v)", n.Name, err))
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if len(failed) > 0 {
		return fmt.Errorf("failed on %s", strings.Join(failed, ", "))
	}
	return nil
}

// ensureRootFS builds the cached rootfs with e2e/rootfs.sh (once, about a
// minute) when it is missing and the script is at hand.
func ensureRootFS(ctx context.Context) error {
	if sandbox.CheckHost("") == nil {
		return nil
	}
	script := "e2e/rootfs.sh"
	if _, err := os.Stat(script); err != nil {
		return sandbox.CheckHost("")
	}
	cmd := exec.CommandContext(ctx, script, "ensure")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s ensure: %w", script, err)
	}
	return nil
}

type nodeStatus struct {
	Name  string `json:"name"`
	IP    string `json:"ip"`
	PID   int    `json:"pid,omitempty"`
	State string `json:"state"`
}

func status(f *sandbox.Fleet, output string) error {
	var rows []nodeStatus
	for _, n := range f.Nodes() {
		s := nodeStatus{Name: n.Name, IP: n.IP.String(), State: "stopped"}
		if pid, err := f.PID(n.Name); err == nil {
			s.PID, s.State = pid, "running"
		}
		rows = append(rows, s)
	}
	if output == "json" {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(map[string]any{"name": f.Name(), "hostIP": f.HostIP().String(), "bridge": f.Bridge(), "nodes": rows})
	}
	w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(w, "fleet %s: host %s on %s\nNODE\tIP\tPID\tSTATE\n", f.Name(), f.HostIP(), f.Bridge())
	for _, r := range rows {
		fmt.Fprintf(w, "%s\t%s\t%d\t%s\n", r.Name, r.IP, r.PID, r.State)
	}
	return w.Flush()
}
