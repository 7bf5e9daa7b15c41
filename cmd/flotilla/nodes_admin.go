package main

import (
	"fmt"
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
