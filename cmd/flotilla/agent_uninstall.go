package main

import (
	"encoding/json"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/flotilla-dev/flotilla/packaging"
)

func newAgentUninstallCmd() *cobra.Command {
	var (
		o      packaging.UninstallOptions
		output string
	)
	cmd := &cobra.Command{
		Use:   "uninstall",
		Short: "Remove the agent that bootstrap.sh installed: unit, binary, config and data",
		Long: `Stops and disables flotilla-agent.service, then removes the unit file,
/usr/local/bin/flotilla, /etc/flotilla and the agent's data dir (its identity:
the node must join again with a new token afterwards). Running it again is harmless.
An agent installed from the flotilla-agent .deb is removed with apt instead.`,
		Example: `  flotilla agent uninstall
  flotilla agent uninstall --keep-data
  flotilla agent uninstall -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if output != "text" && output != "json" {
				return fmt.Errorf("-o %q: want text or json", output)
			}
			if output == "text" {
				o.Progress = func(line string) { fmt.Fprintln(cmd.OutOrStdout(), line) }
			}
			removed, err := packaging.Uninstall(cmd.Context(), o)
			if err != nil {
				return err
			}
			if output == "json" {
				if removed == nil {
					removed = []string{}
				}
				return json.NewEncoder(cmd.OutOrStdout()).Encode(map[string]any{"removed": removed})
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&o.DataDir, "data-dir", "", "agent data dir (default: the one in the installed unit, else "+packaging.DefaultDataDir+")")
	cmd.Flags().BoolVar(&o.KeepData, "keep-data", false, "keep the data dir (the agent's credentials)")
	cmd.Flags().StringVarP(&output, "output", "o", "text", "output: text or json")
	return cmd
}
