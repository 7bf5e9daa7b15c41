package main

import (
	"fmt"
	"time"

	"github.com/flotilla-dev/flotilla/controller/planner"
	"github.com/flotilla-dev/flotilla/protocol"
	"github.com/spf13/cobra"
)

func newPlanCmd() *cobra.Command {
	var (
		conn   cliConnFlags
		file   string
		output string
	)
	cmd := &cobra.Command{
		Use:   "plan -f Clusterfile [-o text|json]",
		Short: "Show what applying a Clusterfile would do on each node; changes nothing",
		Long: `Ask the controller to plan the Clusterfile against its image and what each node has
applied, and print the result: a table with each node's phase and action (create,
update, noop, remove) and counts, then each changed node's work in run order:
'+' to fetch or place, '>' to run, '=' already applied (skipped), '-' to undo.`,
		Example: `  flotilla plan -f Clusterfile
  flotilla plan -f Clusterfile -o json | jq '.phases[].nodes[] | {node, action}'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runPlan(cmd, &conn, file, output)
		},
	}
	conn.register(cmd)
	cmd.Flags().StringVarP(&file, "file", "f", "", "the Clusterfile (required)")
	cmd.Flags().StringVarP(&output, "output", "o", "text", "output: text or json")
	_ = cmd.MarkFlagFilename("file", "yaml", "yml")
	return cmd
}

// runPlan asks the controller for the plan of a Clusterfile and prints it.
func runPlan(cmd *cobra.Command, conn *cliConnFlags, file, output string) error {
	if output != "text" && output != "json" {
		return fmt.Errorf("-o %q: want text or json", output)
	}
	req, _, err := readClusterfile(file)
	if err != nil {
		return err
	}
	req.DryRun = true
	nc, err := conn.connect()
	if err != nil {
		return err
	}
	defer nc.Close()
	var p planner.ClusterPlan
	if err := adminCall(cmd.Context(), nc, protocol.AdminPlan, req, &p, 2*time.Minute, nil); err != nil {
		return err
	}
	if output == "json" {
		return p.WriteJSON(cmd.OutOrStdout())
	}
	return p.WriteText(cmd.OutOrStdout())
}
