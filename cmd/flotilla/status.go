package main

import (
	"errors"
	"fmt"

	"github.com/flotilla-dev/flotilla/cmd/flotilla/internal/rolloutview"
	"github.com/flotilla-dev/flotilla/controller/clusterfile"
	"github.com/flotilla-dev/flotilla/protocol"
	"github.com/spf13/cobra"
)

func newStatusCmd() *cobra.Command {
	var (
		conn   cliConnFlags
		file   string
		output string
	)
	cmd := &cobra.Command{
		Use:   "status [CLUSTER] [-f Clusterfile] [-o table|json]",
		Short: "Show each cluster's desired image, its last rollout and every node's applied image and drift",
		Long: `Show what the controller knows of a cluster (or of every cluster): the desired image
from the last applied Clusterfile, the state and times of the last rollout, and per
node its roles, whether it is online, the image it applied completely, whether it
drifted from the desired state, and its last error. Name the cluster, or give its
Clusterfile with -f.`,
		Example: `  flotilla status
  flotilla status prod-etcd
  flotilla status -f Clusterfile
  flotilla status -o json | jq '.[].nodes[] | select(.drift) | .node'`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if output != "table" && output != "json" {
				return fmt.Errorf("-o %q: want table or json", output)
			}
			var cluster string
			switch {
			case len(args) == 1 && file != "":
				return errors.New("name the cluster or give -f Clusterfile, not both")
			case len(args) == 1:
				cluster = args[0]
			case file != "":
				cf, err := clusterfile.Load(file)
				if err != nil {
					return err
				}
				cluster = cf.Cluster.Name
			}
			c, err := conn.connect()
			if err != nil {
				return err
			}
			defer c.Close()
			list, err := c.Status(cmd.Context(), cluster)
			if err != nil {
				return err
			}
			if output == "json" {
				if list == nil {
					list = []protocol.ClusterStatus{}
				}
				return cliWriteJSON(cmd, list)
			}
			if err := rolloutview.WriteStatus(cmd.OutOrStdout(), list); err != nil {
				return err
			}
			writeControllerLine(cmd.Context(), cmd.OutOrStdout(), c)
			return nil
		},
	}
	conn.register(cmd)
	cmd.Flags().StringVarP(&file, "file", "f", "", "the Clusterfile of the cluster to show")
	cmd.Flags().StringVarP(&output, "output", "o", "table", "output: table or json")
	_ = cmd.MarkFlagFilename("file", "yaml", "yml")
	return cmd
}
