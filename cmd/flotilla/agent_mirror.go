package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/flotilla-dev/flotilla/agent"
	"github.com/flotilla-dev/flotilla/agent/mirror"
)

func newAgentContainerdMirrorCmd() *cobra.Command {
	var root, addr, dataDir string
	cmd := &cobra.Command{
		Use:   "containerd-mirror",
		Short: "Point containerd at the node-local registry mirror (writes certs.d/_default/hosts.toml)",
		Long: `containerd-mirror writes ROOT/etc/containerd/certs.d/_default/hosts.toml so that containerd
pulls every registry's images from the agent's registry mirror first, by their original names
and digests, and from the upstream registry when the mirror lacks them. containerd reads it at
every pull (its registry config_path must be /etc/containerd/certs.d, the default of
containerd 2 and of ctr --hosts-dir). A Kubefile runs it as a step:

  ON all RUN flotilla agent containerd-mirror --root "$FLOTILLA_ROOT"

The mirror serves HTTPS with a certificate of the agent's own CA (its key stays in the
agent's data dir); hosts.toml names that CA (flotilla-mirror-ca.crt beside it) for the
mirror alone, so a process that takes the mirror's address cannot serve containerd.
containerd-mirror first checks that the agent's mirror answers with that certificate: when
it does not, it writes nothing, removes a hosts.toml it wrote before, and fails (the
step fails; ` + "`flotilla agent status`" + ` says why).

Docker reads only registry-mirrors in /etc/docker/daemon.json, for docker.io images:
{"registry-mirrors": ["https://127.0.0.1:505"]}, with the agent's CA (<data-dir>/mirror/ca.crt)
copied to /etc/docker/certs.d/127.0.0.1:505/ca.crt.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			p, served, err := installContainerdMirror(cmd.Context(), root, dataDir, addr)
			if err != nil {
				removed, rerr := mirror.RemoveHostsTOML(root)
				switch {
				case rerr != nil:
					err = errors.Join(err, rerr)
				case removed:
					err = fmt.Errorf("%w\nremoved %s (written earlier): containerd pulls from the upstream registries until this succeeds",
						err, filepath.Join(root, mirror.HostsTOMLPath))
				}
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "wrote %s (mirror https://%s, CA %s)\n", p, served, filepath.Join(root, mirror.HostsCAPath))
			return nil
		},
	}
	cmd.Flags().StringVar(&root, "root", envOr("FLOTILLA_ROOT", "/"), "root of the node's file system ($FLOTILLA_ROOT)")
	cmd.Flags().StringVar(&dataDir, "data-dir", envOr("FLOTILLA_DATA_DIR", "/var/lib/flotilla-agent"), "the agent's data dir ($FLOTILLA_DATA_DIR): its status and its mirror's CA")
	cmd.Flags().StringVar(&addr, "mirror", "", "address containerd reaches the mirror at (default: where the agent's mirror listens, see --registry-listen)")
	return cmd
}

// installContainerdMirror writes containerd's hosts.toml for the agent's
// mirror once the mirror has answered with its certificate, and returns the
// path and the mirror's address.
func installContainerdMirror(ctx context.Context, root, dataDir, addr string) (string, string, error) {
	st, err := agent.ReadStatus(dataDir)
	if err != nil {
		return "", "", fmt.Errorf("containerd is not pointed at the registry mirror: %w", err)
	}
	if st.Stale(time.Now()) {
		return "", "", fmt.Errorf("containerd is not pointed at the registry mirror: the agent's status in %s was last written %s ago; is the agent running?",
			dataDir, time.Since(st.Updated).Round(time.Second))
	}
	if st.RegistryListen == "" {
		return "", "", errors.New("containerd is not pointed at the registry mirror: the agent runs none (--registry-listen \"\"); start it with --registry-listen " + mirror.DefaultListen)
	}
	if p := st.MirrorProblem(); p != "" {
		return "", "", fmt.Errorf("containerd is not pointed at the registry mirror: %s; fix that (`flotilla agent status --data-dir %s`), then apply again", p, dataDir)
	}
	if addr == "" {
		addr = mirror.DialAddr(st.Registry)
	}
	caFile := st.RegistryCA
	if caFile == "" {
		caFile = filepath.Join(agent.MirrorDir(dataDir), mirror.CAFile)
	}
	caPEM, err := os.ReadFile(caFile)
	if err != nil {
		return "", "", fmt.Errorf("containerd is not pointed at the registry mirror: its CA: %w", err)
	}
	if err := mirror.CheckServing(ctx, addr, caPEM); err != nil {
		return "", "", fmt.Errorf("containerd is not pointed at the registry mirror: %w", err)
	}
	p, err := mirror.WriteHostsTOML(root, addr, caPEM)
	return p, addr, err
}
