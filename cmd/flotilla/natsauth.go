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
  operator.jwt         the operator (trusted by every server), with one signing key
  operator-signing.nk  that signing key: the controller re-signs flotilla's account JWT with the users
                       it revoked (--nats-operator-key), mode 0600
  account.jwt          flotilla's account JWT as the servers preload it (--nats-account-jwt)
  account.nk           flotilla's account key: the controller issues node users with it (--nats-account-key), mode 0600
  controller.creds     the controller's own NATS user (--nats-creds), mode 0600
  sys.creds            the controller's system account user: pushes the account JWT to every server (--nats-sys-creds), mode 0600
  leaf.creds           a site's leaf node dials the hub as this user (remote bound to flotilla's account), mode 0600
  leaf-sys.creds       ... and as this system account user (a second remote, bound to the system account),
                       so that revocations reach the site's server too, mode 0600
  auth.conf            include it in every nats-server config: operator, system account, resolver MEMORY with both accounts preloaded

The controller and leaf users never expire; node users expire (--nats-user-ttl) and are renewed
by their agents; a removed or re-joined node's user is revoked on every server.`,
		Example: `  flotilla nats-auth init --dir /etc/flotilla/nats
  # in each nats-server.conf:  include /etc/flotilla/nats/auth.conf
  flotilla controller --nats-url nats://a:4222,nats://b:4222,nats://c:4222 \
      --nats-creds /etc/flotilla/nats/controller.creds --nats-account-key /etc/flotilla/nats/account.nk \
      --nats-operator-key /etc/flotilla/nats/operator-signing.nk --nats-account-jwt /etc/flotilla/nats/account.jwt \
      --nats-sys-creds /etc/flotilla/nats/sys.creds`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if dir == "" {
				return fmt.Errorf("--dir: required")
			}
			s, err := natsauth.Init(dir)
			if err != nil {
				return fmt.Errorf("nats-auth init in %s: %w", dir, err)
			}
			p := func(name string) string { return filepath.Join(dir, name) }
			fmt.Fprintf(cmd.OutOrStdout(), "account %s\nnats-server config: include %s\ncontroller: --nats-creds %s --nats-account-key %s --nats-operator-key %s --nats-account-jwt %s --nats-sys-creds %s\n",
				s.Account, p(natsauth.FileServerConf), p(natsauth.FileControllerCreds), p(natsauth.FileAccountKey),
				p(natsauth.FileOperatorSigningKey), p(natsauth.FileAccountJWT), p(natsauth.FileSysCreds))
			return nil
		},
	}
	initCmd.Flags().StringVar(&dir, "dir", "", "directory to write into (created, mode 0700)")
	cmd.AddCommand(initCmd)
	return cmd
}
