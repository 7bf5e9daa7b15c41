package main

import (
	"context"
	"errors"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/flotilla-dev/flotilla/client"
	"github.com/flotilla-dev/flotilla/internal/human"
	"github.com/flotilla-dev/flotilla/protocol"
)

func newBackupCmd() *cobra.Command {
	var (
		conn    cliConnFlags
		output  string
		timeout time.Duration
	)
	cmd := &cobra.Command{
		Use:   "backup CLUSTER [--timeout D] [-o text|json]",
		Short: "Back a cluster up now with its image's BACKUP command, into the controller's image store",
		Long: `Run the cluster image's BACKUP command (ON <role> BACKUP cmd) on one healthy member of
its role (the members in plan order; offline or failing ones are skipped), with
$FLOTILLA_BACKUP naming the file to write. The agent uploads the file to the controller,
which checks its sha256 and size and stores it as an OCI artifact named
flotilla-backup/<cluster>:<UTC time>: push it to a registry, save and load it like any
image. Prints the backup's name, digest, size and how long it took.`,
		Example: `  flotilla backup demo-etcd
  flotilla backup demo-etcd -o json | jq -r .backup.ref
  flotilla push flotilla-backup/demo-etcd:20260301T100000Z registry.local/backups/demo-etcd:latest`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if output != "text" && output != "json" {
				return fmt.Errorf("-o %q: want text or json", output)
			}
			c, err := conn.connect()
			if err != nil {
				return err
			}
			defer c.Close()
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout+time.Minute)
			defer cancel()
			progress := cmd.ErrOrStderr()
			lastProgress := time.Time{}
			res, err := c.Backup(ctx, protocol.BackupRequest{Cluster: args[0], Timeout: timeout}, func(ev protocol.RolloutEvent) {
				switch ev.Type {
				case protocol.RolloutEventStep:
					fmt.Fprintf(progress, "%s: %s\n", human.TermSafe(ev.Node), human.TermSafe(ev.StepName))
				case protocol.RolloutEventOutput:
					fmt.Fprintf(progress, "%s: %s\n", human.TermSafe(ev.Node), human.TermSafe(ev.Line))
				case protocol.RolloutEventProgress:
					if time.Since(lastProgress) >= time.Second || ev.Done == ev.Total {
						lastProgress = time.Now()
						fmt.Fprintf(progress, "%s: %s %s of %s\n", human.TermSafe(ev.Node), human.TermSafe(ev.Line), human.Bytes(ev.Done), human.Bytes(ev.Total))
					}
				}
			})
			switch {
			case errors.Is(err, client.ErrControllerLost):
				return fmt.Errorf("%w: the backup may not have been stored; see flotilla backups %s", err, args[0])
			case err != nil:
				return err
			}
			if output == "json" {
				return cliWriteJSON(cmd, res)
			}
			b := res.Backup
			fmt.Fprintf(cmd.OutOrStdout(), "backup %s\n  digest  %s\n  size    %s\n  node    %s\n  took    %s\n",
				b.Ref, b.Digest, human.Bytes(b.Size), b.Node, res.Duration.Round(time.Millisecond))
			for _, t := range res.Tried {
				fmt.Fprintf(cmd.OutOrStdout(), "  skipped %s\n", human.TermSafe(t))
			}
			return nil
		},
	}
	conn.register(cmd)
	cmd.Flags().StringVarP(&output, "output", "o", "text", "output: text or json")
	cmd.Flags().DurationVar(&timeout, "timeout", 10*time.Minute, "how long the BACKUP command and the upload may take")
	return cmd
}

func newBackupsCmd() *cobra.Command {
	var (
		conn   cliConnFlags
		output string
	)
	cmd := &cobra.Command{
		Use:   "backups [CLUSTER] [-o table|json]",
		Short: "List the backups in the controller's image store, newest first",
		Long: `List the backups the controller holds (of one cluster, or of all): name, digest, size,
cluster, image, the member that made it and when. A scheduled backup (spec.backup)
that failed since the cluster's last successful one is shown below the table.`,
		Example: `  flotilla backups
  flotilla backups demo-etcd
  flotilla backups demo-etcd -o json | jq -r '.backups[0].ref'`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if output != "table" && output != "json" {
				return fmt.Errorf("-o %q: want table or json", output)
			}
			cluster := ""
			if len(args) == 1 {
				cluster = args[0]
			}
			c, err := conn.connect()
			if err != nil {
				return err
			}
			defer c.Close()
			list, err := c.Backups(cmd.Context(), cluster)
			if err != nil {
				return err
			}
			if output == "json" {
				return cliWriteJSON(cmd, list)
			}
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "BACKUP\tDIGEST\tSIZE\tCLUSTER\tIMAGE\tNODE\tCREATED")
			for _, b := range list.Backups {
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", human.TermSafe(b.Ref), protocol.ShortDigest(b.Digest), human.Bytes(b.Size),
					human.TermSafe(b.Cluster), human.TermSafe(b.Image), human.TermSafe(b.Node), b.Created.UTC().Format(time.RFC3339))
			}
			if err := w.Flush(); err != nil {
				return err
			}
			for _, f := range list.Failures {
				fmt.Fprintf(cmd.OutOrStdout(), "scheduled backup of %s failed at %s: %s\n", human.TermSafe(f.Cluster), f.Time.UTC().Format(time.RFC3339), human.TermSafe(f.Error))
			}
			return nil
		},
	}
	conn.register(cmd)
	cmd.Flags().StringVarP(&output, "output", "o", "table", "output: table or json")
	return cmd
}

func newRestoreCmd() *cobra.Command {
	var (
		f      rolloutFlags
		from   string
		force  bool
		detach bool
	)
	cmd := &cobra.Command{
		Use:   "restore CLUSTER --from BACKUP [--force] [--detach] [-o text|json]",
		Short: "Restore a cluster from a backup with its image's RESTORE stages, then its health check",
		Long: `Run the cluster image's RESTORE commands (ON <role> RESTORE cmd), in the order the image
declares them, each on every member of its role at once, the next stage only once every
member finished the previous one; then the image's CMD health check. Each member first
fetches the backup like a layer (peer to peer, verified by digest) and the command gets
$FLOTILLA_BACKUP naming it. Progress is shown like apply's; the restore is a rollout of
the cluster (flotilla status shows it; a controller restarted in the middle resumes it at
the stage it was in).

Refused: a backup of another cluster or made with another image digest (--force accepts
it), while a rollout of the cluster runs, and a backup whose file no longer matches its
digest in the controller's store.`,
		Example: `  flotilla restore demo-etcd --from flotilla-backup/demo-etcd:20260301T100000Z
  flotilla restore demo-etcd --from sha256:3f2a…
  flotilla restore staging-etcd --from flotilla-backup/prod-etcd:20260301T100000Z --force`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := f.check(); err != nil {
				return err
			}
			if from == "" {
				return errors.New("--from is required: name the backup (flotilla backups " + args[0] + " lists them)")
			}
			req := protocol.RestoreRequest{Cluster: args[0], From: from, Force: force, Detach: detach}
			call := func(ctx context.Context, c *client.Client, on func(protocol.RolloutEvent)) (*protocol.ApplyResult, error) {
				return c.Restore(ctx, req, on)
			}
			return runRollout(cmd, &f, call, detach, args[0])
		},
	}
	f.conn.register(cmd)
	fl := cmd.Flags()
	fl.StringVar(&from, "from", "", "the backup: its name (flotilla-backup/CLUSTER:TIME or CLUSTER:TIME) or digest (prefix)")
	fl.BoolVar(&force, "force", false, "restore a backup of another cluster or made with another image")
	fl.BoolVar(&detach, "detach", false, "return once the restore started; it goes on in the controller")
	fl.StringVarP(&f.output, "output", "o", "text", "output: text (live progress and a summary) or json (the result; progress goes to stderr)")
	fl.BoolVarP(&f.verbose, "verbose", "v", false, "show every output line of every step")
	fl.DurationVar(&f.timeout, "timeout", 2*time.Hour, "stop waiting for the result after this long (the restore goes on in the controller)")
	return cmd
}
