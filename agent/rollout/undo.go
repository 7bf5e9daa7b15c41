package rollout

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"

	"github.com/flotilla-dev/flotilla/agent"
	"github.com/flotilla-dev/flotilla/agent/unpack"
	"github.com/flotilla-dev/flotilla/protocol"
	"github.com/flotilla-dev/flotilla/systemd"
)

func executeUndo(ctx context.Context, sc *agent.StepContext) error {
	var p protocol.UndoPayload
	if err := decodePayload(sc, &p); err != nil {
		return err
	}
	if p.Kind == protocol.UndoForget {
		if err := agent.ForgetSteps(sc.DataDir, p.Digests...); err != nil {
			return fmt.Errorf("forget %d applied steps: %w", len(p.Digests), err)
		}
		sc.Output("stdout", fmt.Sprintf("forgot %d applied steps", len(p.Digests)))
		return nil
	}
	dir, err := clusterDir(sc.DataDir, p.Cluster)
	if err != nil {
		return fmt.Errorf("undo %s %s: %w", p.Kind, p.Target, err)
	}
	if p.Target == "" {
		return fmt.Errorf("undo %s step %q: no target", p.Kind, sc.Step.Name)
	}
	defer pruneClusterDir(dir)
	switch p.Kind {
	case protocol.UndoStopService:
		return undoStopService(ctx, sc, dir, p.Target)
	case protocol.UndoRemoveFile:
		return undoRemoveFile(sc, dir, p.Target)
	case protocol.UndoRemoveLayer:
		return undoRemoveLayer(sc, dir, p.Target)
	case protocol.UndoCleanLvscare:
		return undoCleanLvscare(ctx, sc, p.Target)
	case protocol.UndoRemoveImages:
		if p.Target != p.Cluster {
			return fmt.Errorf("undo remove-images: target %q is not the step's cluster %q", p.Target, p.Cluster)
		}
		return undoRemoveImages(ctx, sc, p.Target)
	}
	return fmt.Errorf("undo step %q: unknown kind %q (want %s, %s, %s, %s, %s or %s; upgrade the agent?)", sc.Step.Name, p.Kind,
		protocol.UndoStopService, protocol.UndoRemoveFile, protocol.UndoRemoveLayer, protocol.UndoCleanLvscare, protocol.UndoRemoveImages, protocol.UndoForget)
}

// undoStopService stops and disables a unit and forgets it was started. A unit
// this agent has no record of is stopped too where systemd is at hand, and
// skipped where it is not (nothing can have started it here).
func undoStopService(ctx context.Context, sc *agent.StepContext, dir, unit string) error {
	if err := validUnit(unit); err != nil {
		return fmt.Errorf("undo stop-service: %w", err)
	}
	services, err := readServices(dir)
	if err != nil {
		return err
	}
	recorded := slices.ContainsFunc(services, func(r ServiceRecord) bool { return r.Unit == unit })
	if err := needsHostRoot(sc, unit); err != nil {
		if recorded {
			return err
		}
		sc.Output("stdout", fmt.Sprintf("%s was not started here (--root %s): nothing to stop", unit, sc.Root))
		return nil
	}
	m, err := connectSystemd(ctx, unit)
	if errors.Is(err, systemd.ErrNoSystemd) && !recorded {
		sc.Output("stdout", fmt.Sprintf("%s was not started here (no systemd): nothing to stop", unit))
		return nil
	}
	if err != nil {
		return err
	}
	defer m.Close()
	if err := m.Stop(ctx, unit, stepTimeout(ctx, sc)); err != nil {
		return fmt.Errorf("undo: stop %s: %w", unit, err)
	}
	if err := m.Disable(ctx, unit); err != nil {
		return fmt.Errorf("undo: %w", err)
	}
	sc.Output("stdout", fmt.Sprintf("stopped and disabled %s", unit))
	recordsMu.Lock()
	defer recordsMu.Unlock()
	if services, err = readServices(dir); err != nil {
		return err
	}
	services = slices.DeleteFunc(services, func(r ServiceRecord) bool { return r.Unit == unit })
	return writeOrRemove(servicesPath(dir), services, len(services) == 0)
}

// undoRemoveFile removes a rendered file if it still has what was placed.
func undoRemoveFile(sc *agent.StepContext, dir, path string) error {
	recordsMu.Lock()
	defer recordsMu.Unlock()
	files, err := readFiles(dir)
	if err != nil {
		return err
	}
	rec, ok := files[path]
	if !ok {
		sc.Output("stdout", fmt.Sprintf("%s: no record of placing it: nothing to remove", path))
		return nil
	}
	kept, err := unpack.Remove(sc.Root, rec.Records)
	reportKept(sc, kept, "it changed since flotilla placed it")
	if err != nil {
		return fmt.Errorf("undo: remove file %s under %s: %w", path, sc.Root, err)
	}
	if len(kept) == 0 {
		sc.Output("stdout", fmt.Sprintf("removed %s", path))
	}
	delete(files, path)
	return writeOrRemove(filesPath(dir), files, len(files) == 0)
}

// undoRemoveLayer removes what a layer placed, except the paths that another
// layer of the cluster still recorded, or a rendered file, placed too. A
// directory this layer created that another record shares passes its "created"
// mark to that record, so that the last one to go removes it.
func undoRemoveLayer(sc *agent.StepContext, dir, digest string) error {
	h, err := unpack.DigestHex(digest)
	if err != nil {
		return fmt.Errorf("undo remove-layer: %w", err)
	}
	recordsMu.Lock()
	defer recordsMu.Unlock()
	recPath := layerRecordPath(dir, h)
	var rec LayerRecord
	found, err := readJSON(recPath, &rec)
	if err != nil {
		return err
	}
	if !found {
		sc.Output("stdout", fmt.Sprintf("layer %s: no record of unpacking it: nothing to remove", protocol.ShortDigest(digest)))
		return gcBlob(sc.DataDir, h)
	}
	others, err := loadOthers(dir, recPath)
	if err != nil {
		return err
	}
	var own []unpack.Record
	for _, r := range rec.Records {
		if !others.claim(r) {
			own = append(own, r)
		}
	}
	if err := others.save(dir); err != nil {
		return fmt.Errorf("undo remove-layer %s: %w", digest, err)
	}
	kept, err := unpack.Remove(sc.Root, own)
	reportKept(sc, kept, "it changed since the layer placed it")
	if err != nil {
		return fmt.Errorf("undo: remove layer %s under %s: %w", digest, sc.Root, err)
	}
	sc.Output("stdout", fmt.Sprintf("layer %s: removed %d of its %d paths (%d shared with other layers or files, %d changed and kept)",
		protocol.ShortDigest(digest), len(own)-len(kept), len(rec.Records), len(rec.Records)-len(own), len(kept)))
	if err := os.Remove(recPath); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("undo: remove layer record %s: %w", recPath, err)
	}
	return gcBlob(sc.DataDir, h)
}

// otherRecords are the cluster's records besides the layer being removed,
// indexed by path.
type otherRecords struct {
	layers map[string]*LayerRecord // by record file
	files  map[string]FileRecord
	byPath map[string]holder
	// inside maps each parent directory of a recorded path to that record.
	inside      map[string]holder
	dirtyLayers map[string]bool
	dirtyFiles  bool
}

// holder is one record entry: layer record file (or files.json key) and index.
type holder struct {
	layer, file string
	i           int
}

func loadOthers(dir, exceptPath string) (*otherRecords, error) {
	o := &otherRecords{layers: map[string]*LayerRecord{}, byPath: map[string]holder{}, inside: map[string]holder{}, dirtyLayers: map[string]bool{}}
	index := func(p string, h holder) {
		if _, dup := o.byPath[p]; !dup {
			o.byPath[p] = h
		}
		for d := path.Dir(p); d != "." && d != "/"; d = path.Dir(d) {
			if _, dup := o.inside[d]; dup {
				break
			}
			o.inside[d] = h
		}
	}
	recs, _ := filepath.Glob(filepath.Join(dir, "layers", "*.json"))
	for _, f := range recs {
		if f == exceptPath {
			continue
		}
		var other LayerRecord
		if _, err := readJSON(f, &other); err != nil {
			return nil, err
		}
		o.layers[f] = &other
		for i, r := range other.Records {
			index(r.Path, holder{layer: f, i: i})
		}
	}
	var err error
	if o.files, err = readFiles(dir); err != nil {
		return nil, err
	}
	for _, p := range slices.Sorted(maps.Keys(o.files)) {
		for i, r := range o.files[p].Records {
			index(r.Path, holder{file: p, i: i})
		}
	}
	return o, nil
}

// claim reports whether another record placed r's path too. A directory r
// created passes to the record that has the same directory (marked created
// there), or else to one that placed something inside it (added there).
func (o *otherRecords) claim(r unpack.Record) bool {
	h, ok := o.byPath[r.Path]
	if !ok {
		h, ok = o.inside[r.Path]
		if !ok || r.Kind != unpack.KindDir || !r.Created {
			return false
		}
		if h.layer != "" {
			l := o.layers[h.layer]
			l.Records = append(l.Records, r)
			o.dirtyLayers[h.layer] = true
		} else {
			fr := o.files[h.file]
			fr.Records = append(fr.Records, r)
			o.files[h.file] = fr
			o.dirtyFiles = true
		}
		return true
	}
	if r.Kind != unpack.KindDir || !r.Created {
		return true
	}
	if h.layer != "" {
		if rec := &o.layers[h.layer].Records[h.i]; !rec.Created {
			rec.Created = true
			o.dirtyLayers[h.layer] = true
		}
	} else if rec := &o.files[h.file].Records[h.i]; !rec.Created {
		rec.Created = true
		o.dirtyFiles = true
	}
	return true
}

func (o *otherRecords) save(dir string) error {
	for f := range o.dirtyLayers {
		if err := writeJSON(f, o.layers[f]); err != nil {
			return err
		}
	}
	if o.dirtyFiles {
		return writeJSON(filesPath(dir), o.files)
	}
	return nil
}

// gcBlob deletes a cached blob that no cluster's layer record names any more.
func gcBlob(dataDir, h string) error {
	unlock := lockBlob(h) // a layer step writes its record before it lets go
	defer unlock()
	users, _ := filepath.Glob(filepath.Join(dataDir, "clusters", "*", "layers", h+".json"))
	if len(users) > 0 {
		return nil
	}
	for _, p := range []string{blobPath(dataDir, h), blobPath(dataDir, h) + ".part"} {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("undo: remove unused blob %s: %w", p, err)
		}
	}
	return nil
}

func reportKept(sc *agent.StepContext, kept []string, why string) {
	for _, k := range kept {
		sc.Output("stderr", fmt.Sprintf("kept %s: %s (remove it by hand if it is not needed)", "/"+strings.TrimPrefix(k, "/"), why))
	}
}

// writeOrRemove writes v to path, or removes path when empty says there is nothing left.
func writeOrRemove(path string, v any, empty bool) error {
	if !empty {
		return writeJSON(path, v)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove %s: %w", path, err)
	}
	return nil
}

// pruneClusterDir removes the cluster's record directories once they are empty.
func pruneClusterDir(dir string) {
	_ = os.Remove(filepath.Join(dir, "layers"))
	_ = os.Remove(dir)
}
