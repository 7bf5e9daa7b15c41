package main

import (
	"fmt"
	"slices"
	"strings"

	"github.com/flotilla-dev/flotilla/protocol"
	"github.com/spf13/cobra"
)

func newNodesRemoveCmd() *cobra.Command {
	var conn cliConnFlags
	cmd := &cobra.Command{
		Use:   "remove NAME…",
		Short: "Remove nodes from the inventory: their credentials stop working and they are disconnected",
		Long: `Remove nodes from the inventory. Their NATS credentials stop working at once and
their connections are closed; the name may join again with a new token. Use it for a
node that is gone for good, or before re-joining a reinstalled host under its old name
(or create a token with ` + "`flotilla token create --for NAME`" + ` instead).`,
		Example: "  flotilla nodes remove web-1",
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := conn.connect()
			if err != nil {
				return err
			}
			defer c.Close()
			for _, name := range args {
				if err := c.RemoveNode(cmd.Context(), name); err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "removed %s\n", name)
			}
			return nil
		},
	}
	conn.register(cmd)
	return cmd
}

func newNodesLabelCmd() *cobra.Command {
	var conn cliConnFlags
	cmd := &cobra.Command{
		Use:   "label NAME KEY=VALUE… | KEY-…",
		Short: "Set or remove a node's labels (the ones Clusterfile selectors and --role match)",
		Long: `Set (KEY=VALUE) or remove (KEY-) labels of a node. Only labels set here, by the
join token or proposed by the node at its first join are applied: labels a node reports
later are shown in its facts (flotilla nodes -o json) but select nothing until applied here.`,
		Example: "  flotilla nodes label web-1 rack=r7 role=web\n  flotilla nodes label web-1 rack-",
		Args:    cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			req := protocol.NodesLabel{Name: args[0], Set: map[string]string{}}
			for _, a := range args[1:] {
				if k, ok := strings.CutSuffix(a, "-"); ok && !strings.Contains(a, "=") {
					req.Remove = append(req.Remove, k)
					continue
				}
				k, v, ok := strings.Cut(a, "=")
				if !ok || k == "" {
					return fmt.Errorf("label %q: want KEY=VALUE to set or KEY- to remove", a)
				}
				req.Set[k] = v
			}
			c, err := conn.connect()
			if err != nil {
				return err
			}
			defer c.Close()
			n, err := c.LabelNode(cmd.Context(), req)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s labels: %s\n", n.Name, labelString(n.Labels))
			return nil
		},
	}
	conn.register(cmd)
	return cmd
}

func newNodesAddressCmd() *cobra.Command {
	var (
		conn       cliConnFlags
		pin, unpin []string
	)
	cmd := &cobra.Command{
		Use:   "address NAME [--pin IP]… [--unpin IP]…",
		Short: "Show or pin the addresses a Clusterfile may select a node by",
		Long: `A Clusterfile that names a host by IP or range selects only nodes whose address the
controller verified: the source address of the node's join and of its NATS connection
(the embedded server), and the addresses pinned here. What a node reports about itself
(its facts) selects nothing: a worker that says it has a master's address does not become
that master. Pin an address that the controller cannot see (a node behind NAT, a second
network) once you checked it is the node's; unpin it when it moves.`,
		Example: `  flotilla nodes address web-1
  flotilla nodes address web-1 --pin 10.0.0.11
  flotilla nodes address web-1 --unpin 10.0.0.11`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := conn.connect()
			if err != nil {
				return err
			}
			defer c.Close()
			var n protocol.NodeInfo
			if len(pin) == 0 && len(unpin) == 0 {
				nodes, err := c.Nodes(cmd.Context())
				if err != nil {
					return err
				}
				i := slices.IndexFunc(nodes, func(n protocol.NodeInfo) bool { return n.Name == args[0] })
				if i < 0 {
					return fmt.Errorf("no node named %q: see `flotilla nodes`", args[0])
				}
				n = nodes[i]
			} else if n, err = c.PinAddresses(cmd.Context(), protocol.NodesAddress{Name: args[0], Pin: pin, Unpin: unpin}); err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "%s verified: %s\n", n.Name, verifiedString(n.VerifiedIPs))
			fmt.Fprintf(w, "%s reports: %s\n", n.Name, strings.Join(n.Facts.IPs, ", "))
			return nil
		},
	}
	conn.register(cmd)
	cmd.Flags().StringSliceVar(&pin, "pin", nil, "address to pin (repeat or comma-separate)")
	cmd.Flags().StringSliceVar(&unpin, "unpin", nil, "address to unpin")
	return cmd
}

// verifiedString shows verified addresses as "IP (how), …".
func verifiedString(v []protocol.VerifiedIP) string {
	if len(v) == 0 {
		return "none"
	}
	parts := make([]string, len(v))
	for i, a := range v {
		parts[i] = a.IP + " (" + a.By + ")"
	}
	return strings.Join(parts, ", ")
}
