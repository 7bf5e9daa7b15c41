package main

import (
	"fmt"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/flotilla-dev/flotilla/protocol"
	"github.com/spf13/cobra"
)

func newNodesCmd() *cobra.Command {
	var (
		conn   cliConnFlags
		output string
	)
	cmd := &cobra.Command{
		Use:   "nodes",
		Short: "List the nodes the controller knows, online or not",
		Example: `  flotilla nodes
  flotilla nodes -o json | jq -r '.[] | select(.online) | .name'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := conn.connect()
			if err != nil {
				return err
			}
			defer c.Close()
			nodes, err := c.Nodes(cmd.Context())
			if err != nil {
				return err
			}
			switch output {
			case "json":
				if nodes == nil {
					nodes = []protocol.NodeInfo{}
				}
				return cliWriteJSON(cmd, nodes)
			case "table", "":
			default:
				return fmt.Errorf("-o %q: want table or json", output)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tSTATUS\tADDRESS\tARCH\tVERSION\tLAST SEEN\tLABELS")
			for _, n := range nodes {
				status := "offline"
				if n.Online {
					status = "online"
				}
				seen := "never"
				if !n.LastSeen.IsZero() {
					seen = time.Since(n.LastSeen).Round(time.Second).String() + " ago"
				}
				// A verified address, else what the node reports, marked.
				addr := "-"
				if len(n.VerifiedIPs) > 0 {
					addr = n.VerifiedIPs[0].IP
				} else if len(n.Facts.IPs) > 0 {
					addr = n.Facts.IPs[0] + " (unverified)"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", n.Name, status, addr, n.Facts.Arch, n.Facts.AgentVersion, seen, labelString(n.Labels))
			}
			if err := tw.Flush(); err != nil {
				return err
			}
			writeControllerLine(cmd.Context(), cmd.OutOrStdout(), c)
			return nil
		},
	}
	conn.register(cmd)
	cmd.Flags().StringVarP(&output, "output", "o", "table", "output: table or json")
	cmd.AddCommand(newNodesRemoveCmd(), newNodesLabelCmd(), newNodesAddressCmd())
	return cmd
}

func labelString(l map[string]string) string {
	if len(l) == 0 {
		return "-"
	}
	parts := make([]string, 0, len(l))
	for k, v := range l {
		parts = append(parts, k+"="+v)
	}
	sort.Strings(parts)
	return strings.Join(parts, ",")
}
