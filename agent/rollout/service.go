package rollout

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/flotilla-dev/flotilla/agent"
	"github.com/flotilla-dev/flotilla/protocol"
	"github.com/flotilla-dev/flotilla/systemd"
)

// defaultServiceTimeout bounds start/restart/stop when the step has no timeout.
const defaultServiceTimeout = 90 * time.Second

// ServiceRecord is one unit a service step started; clusters/<cluster>/services.json
// lists them in the order they were first started.
type ServiceRecord struct {
	Unit string `json:"unit"`
	// Digest covers the unit file and its drop-ins as they were when the unit was
	// last (re)started: a different digest now means restart.
	Digest  string    `json:"digest"`
	Started time.Time `json:"started"`
}

func servicesPath(dir string) string { return filepath.Join(dir, "services.json") }

func readServices(dir string) ([]ServiceRecord, error) {
	var s []ServiceRecord
	if _, err := readJSON(servicesPath(dir), &s); err != nil {
		return nil, err
	}
	return s, nil
}

func validUnit(unit string) error {
	if unit == "" || strings.ContainsAny(unit, "/\x00 ") || strings.HasPrefix(unit, ".") || !strings.Contains(unit, ".") {
		return fmt.Errorf("unit name %q: want a systemd unit name like etcd.service", unit)
	}
	return nil
}

// needsHostRoot refuses service steps of an agent whose --root is not "/":
// the unit file was placed under that root, where this host's systemd does not look.
func needsHostRoot(sc *agent.StepContext, unit string) error {
	if filepath.Clean(sc.Root) != "/" {
		return fmt.Errorf("service %s: SERVICE needs --root / (the unit file is under %s, where systemd does not look)", unit, sc.Root)
	}
	return nil
}

// stepTimeout is how long systemd gets: the step's timeout (default 90 s), less
// a margin before the step's own deadline so that a unit that does not come up
// is reported by systemd, with its journal lines, rather than as a bare timeout.
func stepTimeout(ctx context.Context, sc *agent.StepContext) time.Duration {
	timeout := defaultServiceTimeout
	if sc.Step.Timeout > 0 {
		timeout = sc.Step.Timeout
	}
	if deadline, ok := ctx.Deadline(); ok {
		left := time.Until(deadline)
		timeout = min(timeout, left-min(3*time.Second, left/10))
	}
	return max(timeout, time.Millisecond)
}

func (x *steps) connectSystemd(ctx context.Context, unit string) (UnitManager, error) {
	m, err := x.opts.Units(ctx)
	if errors.Is(err, systemd.ErrNoSystemd) {
		return nil, fmt.Errorf("service %s: %w; run the agent on a host booted with systemd", unit, err)
	}
	if err != nil {
		return nil, fmt.Errorf("service %s: %w", unit, err)
	}
	return m, nil
}

func (x *steps) service(ctx context.Context, sc *agent.StepContext) error {
	var p protocol.ServicePayload
	if err := decodePayload(sc, &p); err != nil {
		return err
	}
	if err := validUnit(p.Unit); err != nil {
		return fmt.Errorf("service step %q: %w", sc.Step.Name, err)
	}
	dir, err := clusterDir(sc.DataDir, p.Cluster)
	if err != nil {
		return fmt.Errorf("service %s: %w", p.Unit, err)
	}
	if err := needsHostRoot(sc, p.Unit); err != nil {
		return err
	}
	digest, err := unitDigest(x.opts.UnitDirs, p.Unit)
	if err != nil {
		return err
	}
	services, err := readServices(dir)
	if err != nil {
		return err
	}
	m, err := x.connectSystemd(ctx, p.Unit)
	if err != nil {
		return err
	}
	defer m.Close()
	timeout := stepTimeout(ctx, sc)
	if err := m.Reload(ctx); err != nil {
		return fmt.Errorf("service %s: %w", p.Unit, err)
	}
	if err := m.Enable(ctx, p.Unit); err != nil {
		return fmt.Errorf("service %s: %w", p.Unit, err)
	}
	i := slices.IndexFunc(services, func(r ServiceRecord) bool { return r.Unit == p.Unit })
	switch {
	case p.Restart:
		sc.Output("stdout", fmt.Sprintf("restarting %s", p.Unit))
		err = m.Restart(ctx, p.Unit, timeout)
	case i >= 0 && services[i].Digest != digest:
		sc.Output("stdout", fmt.Sprintf("restarting %s: its unit file changed since this agent started it", p.Unit))
		err = m.Restart(ctx, p.Unit, timeout)
	default:
		sc.Output("stdout", fmt.Sprintf("starting %s", p.Unit))
		err = m.Start(ctx, p.Unit, timeout)
	}
	if err != nil {
		// *systemd.UnitError carries the unit's state and last journal lines.
		return fmt.Errorf("service %s: %w", p.Unit, err)
	}
	sc.Output("stdout", fmt.Sprintf("%s is active", p.Unit))
	return x.recordService(dir, ServiceRecord{Unit: p.Unit, Digest: digest, Started: time.Now().UTC()})
}

func (x *steps) recordService(dir string, rec ServiceRecord) error {
	x.records.Lock()
	defer x.records.Unlock()
	services, err := readServices(dir)
	if err != nil {
		return err
	}
	if i := slices.IndexFunc(services, func(r ServiceRecord) bool { return r.Unit == rec.Unit }); i >= 0 {
		services[i] = rec
	} else {
		services = append(services, rec)
	}
	if err := writeJSON(servicesPath(dir), services); err != nil {
		return fmt.Errorf("service %s is active, but: %w", rec.Unit, err)
	}
	return nil
}

// unitDigest hashes the unit's file and drop-ins in unitDirs (path and
// content, in order), so that a change to any of them is seen.
func unitDigest(unitDirs []string, unit string) (string, error) {
	names := []string{unit}
	if at := strings.Index(unit, "@"); at > 0 {
		if dot := strings.LastIndex(unit, "."); dot > at+1 {
			names = append(names, unit[:at+1]+unit[dot:]) // foo@bar.service -> foo@.service
		}
	}
	var files []string
	for _, name := range names {
		for _, d := range unitDirs {
			if fi, err := os.Stat(filepath.Join(d, name)); err == nil && !fi.IsDir() {
				files = append(files, filepath.Join(d, name))
				break
			}
		}
		if len(files) > 0 {
			break
		}
	}
	if len(files) == 0 {
		return "", fmt.Errorf("service %s: no unit file %s in %s (place it with a layer or a file step before the service step)",
			unit, strings.Join(names, " or "), strings.Join(unitDirs, ", "))
	}
	for _, name := range names {
		for _, d := range unitDirs {
			dropins, _ := filepath.Glob(filepath.Join(d, name+".d", "*.conf"))
			files = append(files, dropins...)
		}
	}
	sort.Strings(files[1:])
	h := sha256.New()
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			return "", fmt.Errorf("service %s: read %s: %w", unit, f, err)
		}
		fmt.Fprintf(h, "%s\x00%d\x00", f, len(data))
		h.Write(data)
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil)), nil
}
