package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/flotilla-dev/flotilla/client"
	"github.com/flotilla-dev/flotilla/protocol"
	"github.com/spf13/cobra"
)

func newControllerStatusCmd() *cobra.Command {
	var (
		conn   cliConnFlags
		output string
	)
	cmd := &cobra.Command{
		Use:   "status [-o table|json]",
		Short: "Show which controller serves admin requests (the leader, with --ha) and since when",
		Long: `Show the controller that answers admin requests: with --ha, the one holding the
leader lease (standbys answer nothing until they take it). During a failover no
controller answers for up to the lease TTL; this command, like every other,
waits for the new leader within its timeout.`,
		Example: `  flotilla controller status
  flotilla controller status -o json | jq -r .id`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if output != "table" && output != "json" {
				return fmt.Errorf("-o %q: want table or json", output)
			}
			c, err := conn.connect()
			if err != nil {
				return err
			}
			defer c.Close()
			info, err := c.Controller(cmd.Context())
			if err != nil {
				return err
			}
			if output == "json" {
				return cliWriteJSON(cmd, info)
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "controller  %s\n", info.ID)
			fmt.Fprintf(w, "leading     %s\n", leadingSince(info, time.Now()))
			if info.HA {
				fmt.Fprintf(w, "HA          yes: a standby takes over within %s of this one's end\n", info.LeaseTTL)
			} else {
				fmt.Fprintf(w, "HA          no\n")
			}
			fmt.Fprintf(w, "version     %s\nNATS        %s\nHTTPS       %s\n", info.Version, info.NATS, info.HTTPS)
			return nil
		},
	}
	conn.register(cmd)
	cmd.Flags().StringVarP(&output, "output", "o", "table", "output: table or json")
	return cmd
}

// leadingSince says since when info's controller leads, and for how long.
func leadingSince(info protocol.ControllerInfo, now time.Time) string {
	if info.LeaderSince.IsZero() {
		return "no"
	}
	return fmt.Sprintf("since %s (%s)", info.LeaderSince.Local().Format(time.RFC3339), now.Sub(info.LeaderSince).Round(time.Second))
}

// writeControllerLine ends the table views of `nodes` and `status` with the
// controller that answered. A controller too old to say is left out.
func writeControllerLine(ctx context.Context, w io.Writer, c *client.Client) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	info, err := c.Controller(ctx)
	if err != nil {
		return
	}
	ha := ""
	if info.HA {
		ha = ", HA leader"
	}
	fmt.Fprintf(w, "\ncontroller %s%s, leading %s\n", info.ID, ha, leadingSince(info, time.Now()))
}
