package main

import (
	"fmt"
	"path/filepath"

	"github.com/flotilla-dev/flotilla/controller/natsauth"
	"github.com/spf13/cobra"
)

func newNATSAuthCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "nats-auth",
		Short: "Set up NATS decentralized (JWT) auth for running flotilla on an existing NATS cluster",
	}
	var dir string
	initCmd := &cobra.Command{
		Use:   "init",
		Short: "Create an operator, a system account and flotilla's account, the controller's user and the nats-server auth config",
		Long: `Creates in --dir:
  operator.jwt       the operator (trusted by every server)
  account.nk         flotilla's account key: the controller issues node users with it (--nats-account-key), mode 0600
  controller.creds   the controller's own NATS user (--nats-creds), mode 0600
  auth.conf          include it in every nats-server config: operator, system account, resolver MEMORY with both accounts preloaded`,
		Example: `  flotilla nats-auth init --dir /etc/flotilla/nats
  # in each nats-server.conf:  include /etc/flotilla/nats/auth.conf
  flotilla controller --nats-url nats://a:4222,nats://b:4222,nats://c:4222 \
      --nats-creds /etc/flotilla/nats/controller.creds --nats-account-key /etc/flotilla/nats/account.nk`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if dir == "" {
				return fmt.Errorf("--dir: required")
			}
			s, err := natsauth.Init(dir)
			if err != nil {
				return fmt.Errorf("nats-auth init in %s: %w", dir, err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "account %s\nnats-server config: include %s\ncontroller: --nats-creds %s --nats-account-key %s\n",
				s.Account, filepath.Join(dir, natsauth.FileServerConf), filepath.Join(dir, natsauth.FileControllerCreds), filepath.Join(dir, natsauth.FileAccountKey))
			return nil
		},
	}
	initCmd.Flags().StringVar(&dir, "dir", "", "directory to write into (created, mode 0700)")
	cmd.AddCommand(initCmd)
	return cmd
}
