package main

import (
	"fmt"

	"github.com/flotilla-dev/flotilla/cmd/flotilla/internal/rolloutview"
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
	c, err := conn.connect()
	if err != nil {
		return err
	}
	defer c.Close()
	p, err := c.Plan(cmd.Context(), req)
	if err != nil {
		return err
	}
	if output == "json" {
		return rolloutview.WritePlanJSON(cmd.OutOrStdout(), p)
	}
	return rolloutview.WritePlan(cmd.OutOrStdout(), p)
}
