package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/flotilla-dev/flotilla/cmd/flotilla/internal/rolloutview"
	"github.com/spf13/cobra"
	"golang.org/x/term"
)

func newDeleteCmd() *cobra.Command {
	var (
		f         rolloutFlags
		yes       bool
		keepInfra bool
	)
	cmd := &cobra.Command{
		Use:   "delete -f Clusterfile [--yes]",
		Short: "Undo a cluster on every node: stop its services, remove its files, forget its state",
		Long: `Undo everything the cluster's rollouts did on every node, in reverse order: stop and
disable its services, remove the files it placed and the layers it unpacked, then
forget the cluster in the controller, then destroy the machines spec.infra made for
it (unless --keep-infra). Progress and the summary are shown as for apply;
unreachable nodes are reported. Asks for confirmation on a terminal; without a terminal
(scripts, CI) --yes is required.`,
		Example: `  flotilla delete -f Clusterfile
  flotilla delete -f Clusterfile --yes -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := f.check(); err != nil {
				return err
			}
			req, cluster, err := readClusterfile(f.file)
			if err != nil {
				return err
			}
			name := cluster
			if name == "" {
				name = "of " + f.file
			}
			if !yes {
				if !term.IsTerminal(int(os.Stdin.Fd())) {
					return fmt.Errorf("refusing to delete cluster %s without confirmation: stdin is not a terminal; pass --yes", name)
				}
				err := rolloutview.Confirm(cmd.InOrStdin(), cmd.ErrOrStderr(),
					fmt.Sprintf("Delete cluster %s? This stops its services and removes its files on every node.", name))
				if errors.Is(err, rolloutview.ErrNotConfirmed) {
					return &exitError{code: 1, err: errors.New("not deleted: answer y to confirm, or pass --yes")}
				}
				if err != nil {
					return err
				}
			}
			req.KeepInfra = keepInfra
			return runRollout(cmd, &f, deleteCall(req), false, cluster)
		},
	}
	f.register(cmd)
	cmd.Flags().BoolVarP(&yes, "yes", "y", false, "do not ask for confirmation")
	cmd.Flags().BoolVar(&keepInfra, "keep-infra", false, "leave the machines spec.infra made running (they join a later apply of the cluster again)")
	return cmd
}
