package main

import (
	"bufio"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/flotilla-dev/flotilla/bundle/registry"
)

func newPushCmd() *cobra.Command {
	var storeDir string
	var insecure, quiet bool
	cmd := &cobra.Command{
		Use:   "push IMAGE [DESTINATION]",
		Short: "Upload a cluster image to an OCI registry",
		Long: `push uploads IMAGE from the local store to the registry its name (or DESTINATION) names.
Blobs the registry already has are not uploaded again. Credentials come from Docker's
config file (flotilla login, docker login).`,
		Example: "  flotilla push registry.local/etcd-cluster:3.4\n  flotilla push hello:1 127.0.0.1:5000/hello:1 --insecure",
		Args:    cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			st, err := openImageStore(storeDir)
			if err != nil {
				return err
			}
			dest := ""
			if len(args) == 2 {
				dest = args[1]
			}
			start := time.Now()
			d, err := registry.Push(cmd.Context(), st, args[0], dest, registry.Options{Insecure: insecure, Progress: imgProgress(quiet)})
			if err != nil {
				return err
			}
			if dest == "" {
				dest = args[0]
			}
			fmt.Fprintf(cmd.OutOrStdout(), "pushed %s %s in %s\n", dest, d.Digest, time.Since(start).Round(time.Millisecond))
			return nil
		},
	}
	cmd.Flags().BoolVar(&insecure, "insecure", false, "use plain HTTP (for a registry without TLS)")
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "no progress")
	addImageStoreFlag(cmd, &storeDir)
	return cmd
}

func newPullCmd() *cobra.Command {
	var storeDir string
	var insecure, quiet bool
	cmd := &cobra.Command{
		Use:   "pull IMAGE",
		Short: "Download a cluster image (every platform) from an OCI registry into the local store",
		Long: `pull downloads IMAGE and verifies every blob against its digest before anything enters
the local store; a failed pull leaves the store unchanged.`,
		Example: "  flotilla pull registry.local/etcd-cluster:3.4\n  flotilla pull 127.0.0.1:5000/hello:1 --insecure",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			st, err := openImageStore(storeDir)
			if err != nil {
				return err
			}
			start := time.Now()
			d, err := registry.Pull(cmd.Context(), st, args[0], registry.Options{Insecure: insecure, Progress: imgProgress(quiet)})
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "pulled %s %s in %s\n", args[0], d.Digest, time.Since(start).Round(time.Millisecond))
			return nil
		},
	}
	cmd.Flags().BoolVar(&insecure, "insecure", false, "use plain HTTP (for a registry without TLS)")
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "no progress")
	addImageStoreFlag(cmd, &storeDir)
	return cmd
}

func newLoginCmd() *cobra.Command {
	var user, password string
	var passwordStdin, insecure bool
	cmd := &cobra.Command{
		Use:   "login REGISTRY",
		Short: "Store credentials for a registry in Docker's config file",
		Long: `login checks the user and password against REGISTRY and saves them where push, pull,
docker and crane look ($DOCKER_CONFIG/config.json or ~/.docker/config.json).`,
		Example: "  flotilla login registry.local -u admin --password-stdin < pass.txt\n  flotilla login 127.0.0.1:5000 -u ci -p secret --insecure",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if user == "" {
				return fmt.Errorf("login needs -u USER")
			}
			if passwordStdin {
				line, err := bufio.NewReader(os.Stdin).ReadString('\n')
				if err != nil && line == "" {
					return fmt.Errorf("read password from stdin: %w", err)
				}
				password = strings.TrimRight(line, "\r\n")
			}
			if password == "" {
				return fmt.Errorf("login needs a password: -p PASSWORD or --password-stdin")
			}
			if err := registry.Login(cmd.Context(), args[0], user, password, registry.Options{Insecure: insecure}); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "logged in to %s as %s\n", args[0], user)
			return nil
		},
	}
	cmd.Flags().StringVarP(&user, "username", "u", "", "user name")
	cmd.Flags().StringVarP(&password, "password", "p", "", "password (prefer --password-stdin: -p shows in ps)")
	cmd.Flags().BoolVar(&passwordStdin, "password-stdin", false, "read the password from stdin")
	cmd.Flags().BoolVar(&insecure, "insecure", false, "use plain HTTP (for a registry without TLS)")
	return cmd
}

func newLogoutCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "logout REGISTRY",
		Short:   "Remove a registry's credentials from Docker's config file",
		Example: "  flotilla logout registry.local",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := registry.Logout(args[0]); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "logged out of %s\n", args[0])
			return nil
		},
	}
}
