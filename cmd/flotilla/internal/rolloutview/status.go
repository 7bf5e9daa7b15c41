package rolloutview

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/flotilla-dev/flotilla/protocol"
)

// WriteStatus writes, for each cluster, a header line (desired image, rollout state and
// times) and a table of its nodes: roles, online, applied image, drift and last error.
func WriteStatus(w io.Writer, clusters []protocol.ClusterStatus) error {
	if len(clusters) == 0 {
		_, err := fmt.Fprintln(w, "no clusters: apply a Clusterfile first (flotilla apply -f Clusterfile)")
		return err
	}
	for i, c := range clusters {
		if i > 0 {
			fmt.Fprintln(w)
		}
		fmt.Fprintln(w, statusHeader(c))
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "NODE\tROLES\tONLINE\tAPPLIED\tDRIFT\tLAST ERROR")
		drift := 0
		for _, n := range c.Nodes {
			applied := "-"
			if n.Applied != "" {
				applied = protocol.ShortDigest(n.Applied)
			}
			if n.Drift {
				drift++
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", n.Node, dash(strings.Join(n.Roles, ",")), yesNo(n.Online), applied,
				yesNo(n.Drift), dash(firstLine(n.LastError)))
		}
		if err := tw.Flush(); err != nil {
			return fmt.Errorf("write status: %w", err)
		}
		if drift > 0 {
			fmt.Fprintf(w, "%s of %d drifted from the desired state: flotilla apply the Clusterfile again to converge\n",
				plural(drift, "node"), len(c.Nodes))
		}
	}
	return nil
}

func statusHeader(c protocol.ClusterStatus) string {
	h := "cluster " + c.Cluster + ": image " + dash(c.Image)
	if c.ImageDigest != "" {
		h += " (" + protocol.ShortDigest(c.ImageDigest) + ")"
	}
	if c.Rollout != "" {
		h += ", rollout " + c.Rollout
		if c.Kind == "restore" {
			h += " (restore)"
		}
	}
	if c.State != "" {
		h += " " + c.State
	}
	if !c.Started.IsZero() {
		h += ", started " + c.Started.UTC().Format(time.DateTime) + " UTC"
	}
	if !c.Finished.IsZero() {
		h += ", finished " + c.Finished.UTC().Format(time.DateTime) + " UTC"
		if !c.Started.IsZero() && c.Finished.After(c.Started) {
			h += " (took " + Duration(c.Finished.Sub(c.Started)) + ")"
		}
	}
	return h
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(strings.TrimSpace(s), "\n")
	return s
}
