package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/flotilla-dev/flotilla/agent/mirror"
)

func newAgentContainerdMirrorCmd() *cobra.Command {
	var root, addr string
	cmd := &cobra.Command{
		Use:   "containerd-mirror",
		Short: "Point containerd at the node-local registry mirror (writes certs.d/_default/hosts.toml)",
		Long: `containerd-mirror writes ROOT/etc/containerd/certs.d/_default/hosts.toml so that containerd
pulls every registry's images from the agent's registry mirror first, by their original names
and digests, and from the upstream registry when the mirror lacks them. containerd reads it at
every pull (its registry config_path must be /etc/containerd/certs.d, the default of
containerd 2 and of ctr --hosts-dir). A Kubefile runs it as a step:

  ON all RUN flotilla agent containerd-mirror --root "$FLOTILLA_ROOT"

Docker reads only registry-mirrors in /etc/docker/daemon.json, for docker.io images:
{"registry-mirrors": ["http://127.0.0.1:5050"]}.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := mirror.WriteHostsTOML(root, addr)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "wrote %s (mirror http://%s)\n", p, addr)
			return nil
		},
	}
	cmd.Flags().StringVar(&root, "root", envOr("FLOTILLA_ROOT", "/"), "root of the node's file system ($FLOTILLA_ROOT)")
	cmd.Flags().StringVar(&addr, "mirror", mirror.DefaultListen, "the agent's --registry-listen address")
	return cmd
}
