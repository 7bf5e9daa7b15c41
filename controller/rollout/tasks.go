package rollout

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/flotilla-dev/flotilla/controller/blobserver"

	"github.com/flotilla-dev/flotilla/bundle/recipe"
	"github.com/flotilla-dev/flotilla/controller/planner"
	"github.com/flotilla-dev/flotilla/internal/human"
	"github.com/flotilla-dev/flotilla/protocol"
)

// nodeTask is one node's work as task steps, with what each step's success means for
// the node's applied state.
type nodeTask struct {
	steps  []protocol.Step
	record []func(a *planner.Applied) // per step: applied on success (run or skipped as done)
	sizes  []int64                    // per step: bytes a layer step fetches (0 for others)
	// planSteps are the step digests of the node's plan (skipped ones too): what the
	// applied state keeps once the node completes.
	planSteps map[string]bool
}

// LayerStepDigest is the applied-step digest of a layer step, so an agent that
// unpacked the layer for this cluster skips it.
func LayerStepDigest(cluster, digest string) string { return "layer:" + cluster + ":" + digest }

// buildTask lists a node's steps in run order: undo of services and files no longer
// wanted, then layers, files and run/service steps interleaved as the image orders
// them, then the removal of layers no longer needed, then forgetting the step digests
// that no longer belong to the node (so a node that gets them back runs them again).
// File steps carry no digest: placing a file is idempotent, and a digest could not
// tell an agent that a path's content changed back.
func (r *rolloutRun) buildTask(ctx context.Context, np *planner.NodePlan, applied planner.Applied) (*nodeTask, error) {
	cluster := r.plan.Cluster
	nt := &nodeTask{planSteps: map[string]bool{}}
	add := func(s protocol.Step, size int64, rec func(*planner.Applied)) {
		if s.Timeout <= 0 {
			s.Timeout = r.stepTimeout()
		}
		nt.steps = append(nt.steps, s)
		nt.sizes = append(nt.sizes, size)
		nt.record = append(nt.record, rec)
	}
	undo := func(u planner.Undo) {
		p := protocol.UndoPayload{Cluster: cluster, Kind: string(u.Kind), Target: u.Target}
		name := fmt.Sprintf("undo %s %s", u.Kind, u.Target)
		if u.Kind == planner.UndoRemoveLayer {
			name = fmt.Sprintf("undo remove-layer %s", protocol.ShortDigest(u.Target))
		}
		add(protocol.Step{Name: name, Kind: protocol.KindUndo, Payload: mustJSON(p)}, 0, func(a *planner.Applied) {
			switch u.Kind {
			case planner.UndoStopService:
				a.Services = slices.DeleteFunc(a.Services, func(s string) bool { return s == u.Target })
			case planner.UndoRemoveFile:
				a.Files = slices.DeleteFunc(a.Files, func(f planner.AppliedFile) bool { return f.Path == u.Target })
			case planner.UndoRemoveLayer:
				a.Layers = slices.DeleteFunc(a.Layers, func(l string) bool { return l == u.Target })
			case planner.UndoRemoveImages:
				a.Images, a.ImagesDigest = nil, ""
			}
		})
	}

	// A leaving node runs its CLEANUP commands first, last first, while its
	// services still run (a Kubernetes node drains itself through its kubelet's
	// credentials, say). They carry no digest: a removal that is resumed runs
	// them again, so they must be safe to repeat.
	if np.Action == planner.ActionRemove {
		for i := len(np.Cleanup) - 1; i >= 0; i-- {
			st := np.Cleanup[i]
			name := "cleanup: " + oneLine(st.Command, 60)
			add(protocol.Step{Kind: protocol.KindRun, Shell: st.Command, Env: st.Env, Timeout: st.Timeout, Name: name}, 0, nil)
		}
	}
	for _, u := range np.Undo {
		if u.Kind != planner.UndoRemoveLayer && u.Kind != planner.UndoRemoveImages {
			undo(u)
		}
	}
	for _, it := range np.Ordered() {
		switch {
		case it.Layer != nil:
			l := *it.Layer
			if l.Skip {
				continue
			}
			// The token is minted for each attempt (mintTokens).
			p := protocol.LayerPayload{Cluster: cluster, Digest: l.Digest, DiffID: l.DiffID, Size: l.Size, URL: r.e.blobURL(l.Digest)}
			if u := l.Unpack; u != nil {
				p.MaxUnpackBytes, p.MaxUnpackEntries, p.KeepSetuid = u.MaxBytes, u.MaxEntries, u.KeepSetuid
			}
			p.Contents = l.Contents
			if d := r.e.opts.DecorateLayer; d != nil {
				if err := d(ctx, LayerRequest{Cluster: &r.cf.Cluster, Node: np.Node, Payload: &p}); err != nil {
					return nil, fmt.Errorf("node %s: layer %s: %w", np.Node, l.Digest, err)
				}
			}
			add(protocol.Step{Name: fmt.Sprintf("layer %s %s", protocol.ShortDigest(l.Digest), human.Bytes(l.Size)), Kind: protocol.KindLayer,
				Payload: mustJSON(p), Digest: LayerStepDigest(cluster, l.Digest)}, l.Size, func(a *planner.Applied) {
				if !slices.Contains(a.Layers, l.Digest) {
					a.Layers = append(a.Layers, l.Digest)
				}
			})
		case it.Images != nil:
			im := it.Images
			if im.Skip {
				continue
			}
			s, err := r.imagesStep(ctx, np.Node, im)
			if err != nil {
				return nil, err
			}
			add(s, 0, func(a *planner.Applied) { a.Images, a.ImagesDigest = im.AppliedImages(), im.Digest })
		case it.File != nil:
			f := *it.File
			if f.Skip {
				continue
			}
			p := protocol.FilePayload{Cluster: cluster, Path: f.Path, Mode: f.Mode, Content: f.Content, Digest: f.Digest}
			add(protocol.Step{Name: "file " + f.Path, Kind: protocol.KindFile, Payload: mustJSON(p)}, 0, func(a *planner.Applied) {
				af := planner.AppliedFile{Path: f.Path, Digest: f.Digest, Mode: f.Mode}
				if i := slices.IndexFunc(a.Files, func(x planner.AppliedFile) bool { return x.Path == f.Path }); i >= 0 {
					a.Files[i] = af
				} else {
					a.Files = append(a.Files, af)
				}
			})
		default:
			st := *it.Step
			nt.planSteps[st.Digest] = true
			if st.Skip {
				continue
			}
			rec := func(a *planner.Applied) {
				if !slices.Contains(a.Steps, st.Digest) {
					a.Steps = append(a.Steps, st.Digest)
				}
			}
			s := protocol.Step{Kind: protocol.KindRun, Shell: st.Command, Env: st.Env, Timeout: st.Timeout, Digest: st.Digest,
				Name: "run: " + oneLine(st.Command, 60)}
			if st.Kind == recipe.KindService {
				p := protocol.ServicePayload{Cluster: cluster, Unit: st.Command, Restart: slices.Contains(applied.Services, st.Command)}
				s = protocol.Step{Kind: protocol.KindService, Payload: mustJSON(p), Env: st.Env, Timeout: st.Timeout, Digest: st.Digest,
					Name: "service " + st.Command}
				rec = func(a *planner.Applied) {
					if !slices.Contains(a.Steps, st.Digest) {
						a.Steps = append(a.Steps, st.Digest)
					}
					if !slices.Contains(a.Services, st.Command) {
						a.Services = append(a.Services, st.Command)
					}
				}
			}
			add(s, 0, rec)
		}
	}
	var forget []string
	for _, u := range np.Undo {
		switch u.Kind {
		case planner.UndoRemoveLayer:
			undo(u)
			forget = append(forget, LayerStepDigest(cluster, u.Target))
		case planner.UndoRemoveImages:
			undo(u)
		}
	}
	// The agent skips an images step whose digest it applied: forget the replaced one,
	// so that going back to that set imports it again.
	if d := applied.ImagesDigest; d != "" && (np.Images == nil || np.Images.Digest != d) {
		forget = append(forget, d)
	}
	var stale []string
	for _, d := range applied.Steps {
		if !nt.planSteps[d] {
			stale = append(stale, d)
		}
	}
	if len(stale)+len(forget) > 0 {
		forget = append(forget, stale...)
		p := protocol.UndoPayload{Cluster: cluster, Kind: protocol.UndoForget, Digests: forget}
		add(protocol.Step{Name: fmt.Sprintf("forget %d applied steps", len(forget)), Kind: protocol.KindUndo, Payload: mustJSON(p)}, 0,
			func(a *planner.Applied) {
				a.Steps = slices.DeleteFunc(a.Steps, func(d string) bool { return slices.Contains(stale, d) })
			})
	}
	return nt, nil
}

// blobTokenExpiry is when the blob tokens of a task signed to expire at
// taskExpires end, on the controller's clock. The node may accept the task
// until taskExpires (plus the clock skew agents allow); it may then wait
// behind at most one earlier task of the same cluster (an attempt the engine
// gave up on while the node still ran it, or the task of an engine that
// stopped and resumed: the same steps, bounded by the same timeouts), then
// runs the steps one after another, each within its timeout, and every
// fetch of a blob (or the resumption of one) happens inside its step. With
// the default 10-minute steps a task of 6 steps gets about 2 hours, not the
// day a token used to last; a token that leaks, or whose node was removed,
// is worth nothing past the task it came in (the inventory check refuses a
// removed node at once anyway).
func blobTokenExpiry(taskExpires time.Time, steps []protocol.Step) time.Time {
	var run time.Duration
	for _, s := range steps {
		run += s.Timeout
	}
	return taskExpires.Add(protocol.DefaultMaxClockSkew + 2*run)
}

// mintTokens returns steps with fresh blob tokens for node, valid until
// expires: every layer step's and every blob of an images step. The other
// steps are shared with the input, which is left as it is.
func (e *Engine) mintTokens(node string, steps []protocol.Step, expires time.Time) ([]protocol.Step, error) {
	out := slices.Clone(steps)
	for i, s := range out {
		switch s.Kind {
		case protocol.KindLayer:
			var p protocol.LayerPayload
			if err := json.Unmarshal(s.Payload, &p); err != nil {
				return nil, fmt.Errorf("node %s: step %q: %w", node, s.Name, err)
			}
			p.Token = e.blobs.Token(node, p.Digest, expires)
			out[i].Payload = mustJSON(p)
		case protocol.KindImages:
			var p protocol.ImagesPayload
			if err := json.Unmarshal(s.Payload, &p); err != nil {
				return nil, fmt.Errorf("node %s: step %q: %w", node, s.Name, err)
			}
			for j := range p.Blobs {
				p.Blobs[j].Token = e.blobs.Token(node, p.Blobs[j].Digest, expires)
			}
			out[i].Payload = mustJSON(p)
		}
	}
	return out, nil
}

func (r *rolloutRun) stepTimeout() time.Duration {
	if t := r.plan.Rollout.StepTimeout; t > 0 {
		return t
	}
	return 10 * time.Minute
}

func (e *Engine) blobURL(digest string) string {
	base := e.opts.BaseURL
	if base == "" {
		base = e.ctrl.HTTPURL()
	}
	return strings.TrimSuffix(base, "/") + blobserver.Path + digest
}

func mustJSON(v any) json.RawMessage {
	b, err := json.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("encode %T: %v", v, err)) // only fixed protocol types, which always encode
	}
	return b
}

func oneLine(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if len([]rune(s)) > n {
		return string([]rune(s)[:n-1]) + "…"
	}
	return s
}
