package rolloutview

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/flotilla-dev/flotilla/internal/human"
	"github.com/flotilla-dev/flotilla/protocol"
)

// WritePlanJSON writes the plan as indented JSON (the controller never sends
// rendered contents and env: they may hold secrets).
func WritePlanJSON(w io.Writer, p *protocol.ClusterPlan) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(p); err != nil {
		return fmt.Errorf("write plan as JSON: %w", err)
	}
	return nil
}

// WritePlan writes a summary table (one row per node) followed by each changed node's
// work in run order: `+` to fetch or place, `>` to run, `=` skipped, `-` to undo.
func WritePlan(w io.Writer, p *protocol.ClusterPlan) error {
	fmt.Fprintf(w, "cluster %s: image %s", p.Cluster, p.Image)
	if p.ImageDigest != "" {
		fmt.Fprintf(w, " (%s)", protocol.ShortDigest(p.ImageDigest))
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PHASE\tNODE\tIP\tROLES\tACTION\tFETCH\tFILES\tIMAGES\tRUN\tSKIP\tUNDO")
	for _, ph := range p.Phases {
		for _, n := range ph.Nodes {
			var fetch, files, run, skip int
			for _, l := range n.Layers {
				if !l.Skip {
					fetch++
				}
			}
			for _, f := range n.Files {
				if !f.Skip {
					files++
				}
			}
			for _, s := range n.Steps {
				if s.Skip {
					skip++
				} else {
					run++
				}
			}
			ip := n.IP
			if !n.Online {
				ip += " (offline)"
			}
			images := "-"
			if n.Images != nil {
				images = fmt.Sprint(len(n.Images.Images))
				if n.Images.Skip {
					images = "=" + images
				}
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%d\t%s\t%d\t%d\t%d\n", ph.Name, n.Node, strings.TrimSpace(ip),
				strings.Join(n.Roles, ","), n.Action, fetch, files, images, run, skip, len(n.Undo))
		}
	}
	if err := tw.Flush(); err != nil {
		return fmt.Errorf("write plan: %w", err)
	}
	for _, n := range p.Nodes() {
		if n.Action == protocol.ActionNoop {
			continue
		}
		fmt.Fprintf(w, "\n%s (%s):\n", n.Node, n.Action)
		if ms := n.Membership; ms != nil && len(ms.Join) > 0 {
			fmt.Fprintf(w, "  joins the %s membership (%s, peers %s); first, on member %s:\n", ms.Role, ms.State, strings.Join(ms.Peers, " "), viaList(ms.Via))
			for _, s := range ms.Join {
				fmt.Fprintf(w, "  > join %s (Kubefile line %d)\n", s.Command, s.Line)
			}
		}
		if n.Action == protocol.ActionRemove && !n.Online {
			fmt.Fprintf(w, "  offline: its cleanup and undo wait until it is back\n")
		}
		if n.Action == protocol.ActionRemove {
			for i := len(n.Cleanup) - 1; i >= 0; i-- {
				fmt.Fprintf(w, "  > cleanup %s (Kubefile line %d)\n", n.Cleanup[i].Command, n.Cleanup[i].Line)
			}
		}
		for _, u := range n.Undo {
			if u.Kind != protocol.UndoRemoveLayer && u.Kind != protocol.UndoRemoveImages {
				fmt.Fprintf(w, "  - %s %s\n", u.Kind, u.Target)
			}
		}
		for _, it := range n.Ordered() {
			switch {
			case it.Layer != nil:
				mark := "+"
				if it.Layer.Skip {
					mark = "="
				}
				fmt.Fprintf(w, "  %s layer %s (%s, role %s)\n", mark, protocol.ShortDigest(it.Layer.Digest), human.Bytes(it.Layer.Size), it.Layer.Role)
			case it.File != nil:
				mark := "+"
				if it.File.Skip {
					mark = "="
				}
				fmt.Fprintf(w, "  %s file %s %04o (%s, %s)\n", mark, it.File.Path, it.File.Mode, it.File.Source, protocol.ShortDigest(it.File.Digest))
			case it.Images != nil:
				writeImages(w, it.Images)
			default:
				mark := ">"
				if it.Step.Skip {
					mark = "="
				}
				fmt.Fprintf(w, "  %s %s %s (role %s; %s)\n", mark, it.Step.Kind, it.Step.Command, it.Step.Role, it.Step.Reason)
			}
		}
		for _, u := range n.Undo {
			if u.Kind == protocol.UndoRemoveLayer {
				fmt.Fprintf(w, "  - %s %s\n", u.Kind, protocol.ShortDigest(u.Target))
			}
		}
		for _, name := range n.DropImages {
			fmt.Fprintf(w, "  - image %s (no longer carried for this node: garbage-collected from its cache)\n", name)
		}
		if ms := n.Membership; ms != nil && len(ms.Leave) > 0 {
			fmt.Fprintf(w, "  then it leaves the %s membership, on member %s:\n", ms.Role, viaList(ms.Via))
			for _, s := range ms.Leave {
				fmt.Fprintf(w, "  > leave %s (Kubefile line %d)\n", s.Command, s.Line)
			}
		}
		if ms := n.Membership; ms != nil && ms.Quorum && n.Action != protocol.ActionNoop && p.HealthCheck != nil {
			fmt.Fprintf(w, "  then the health check (quorum role %s: one member at a time)\n", ms.Role)
		}
	}
	if p.HealthCheck != nil {
		fmt.Fprintf(w, "\nhealth check on master0 after every phase: %s\n", p.HealthCheck.Command)
	}
	return nil
}

// viaList names the members that may run a JOIN or LEAVE: the first online one does.
func viaList(via []string) string {
	if len(via) <= 1 {
		return strings.Join(via, "")
	}
	return via[0] + " (else " + strings.Join(via[1:], ", ") + ")"
}

// writeImages lists the container images of a node's images step.
func writeImages(w io.Writer, im *protocol.PlannedImages) {
	mark, what := "+", "fetch what the node's cache lacks of"
	if im.Skip {
		mark, what = "=", "imported already:"
	}
	fmt.Fprintf(w, "  %s images for %s: %s %d blobs (%s)\n", mark, im.Platform, what, len(im.Blobs), human.Bytes(im.Size))
	for _, ci := range im.Images {
		name := ci.Name
		if !strings.Contains(name, "@") {
			name += " " + protocol.ShortDigest(ci.Digest)
		}
		fmt.Fprintf(w, "    %s image %s (roles %s)\n", mark, name, strings.Join(ci.Roles, ","))
	}
}
