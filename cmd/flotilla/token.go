package main

import (
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/flotilla-dev/flotilla/protocol"
	"github.com/spf13/cobra"
)

func newTokenCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "token",
		Short: "Create, list and revoke join tokens",
		Example: `  flotilla token create --ttl 2h
  flotilla token list
  flotilla token revoke 1a2b3c4d`,
	}
	cmd.AddCommand(newTokenCreateCmd(), newTokenListCmd(), newTokenRevokeCmd())
	return cmd
}

func newTokenCreateCmd() *cobra.Command {
	var (
		conn   cliConnFlags
		req    protocol.TokenCreate
		labels string
		output string
	)
	cmd := &cobra.Command{
		Use:   "create",
		Short: "Create a join token and print the one-liner that bootstraps a node with it",
		Long: `Create a join token. It joins any number of new nodes until --ttl runs out
(like kubeadm's), or --uses of them. A join never replaces a node already in the
inventory: re-joining one (a reinstalled host) needs a token created --for its name,
or removing it first with ` + "`flotilla nodes remove NAME`" + `.`,
		Example: `  flotilla token create --ttl 24h
  flotilla token create --ttl 2h --uses 3 --labels rack=r7 --description "rack r7" -o json
  flotilla token create --ttl 1h --for web-1   # re-join web-1 with new credentials`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if req.TTL <= 0 {
				return fmt.Errorf("--ttl %s: want a positive duration such as 24h", req.TTL)
			}
			if req.Uses < 0 {
				return fmt.Errorf("--uses %d: want 0 (any number within --ttl) or more", req.Uses)
			}
			if req.For != "" {
				if err := protocol.ValidateNodeName(req.For); err != nil {
					return fmt.Errorf("--for: %w", err)
				}
			}
			l, err := parseLabels(labels)
			if err != nil {
				return fmt.Errorf("--labels: %w", err)
			}
			if err := protocol.ValidateLabels("--labels", l); err != nil {
				return err
			}
			if len(l) > 0 {
				req.Labels = l
			}
			c, err := conn.connect()
			if err != nil {
				return err
			}
			defer c.Close()
			ti, err := c.CreateToken(cmd.Context(), req)
			if err != nil {
				return err
			}
			if output == "json" {
				return cliWriteJSON(cmd, ti)
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "token:   %s\nexpires: %s\nCA hash: %s\n\nOn each node, as root (it checks the controller's CA against the hash before it fetches and runs anything):\n  %s\n\nor with the binary already there:\n  flotilla agent --controller %s --token %s --ca-hash %s\n",
				ti.Token, ti.Expires.Local().Format(time.RFC3339), ti.CAHash, ti.Bootstrap, ti.JoinURL, ti.Token, ti.CAHash)
			return nil
		},
	}
	conn.register(cmd)
	cmd.Flags().DurationVar(&req.TTL, "ttl", 24*time.Hour, "how long the token can be used to join")
	cmd.Flags().StringVar(&req.Description, "description", "", "a note shown by `token list`")
	cmd.Flags().IntVar(&req.Uses, "uses", 0, "how many nodes may join with the token (0: any number until --ttl)")
	cmd.Flags().StringVar(&req.For, "for", "", "the one node name the token joins; the only way to re-join a node still in the inventory")
	cmd.Flags().StringVar(&labels, "labels", "", "the labels of every node joining with the token, k=v,k2=v2: all its labels (those the node asks for are not applied; without --labels its first join chooses them)")
	cmd.Flags().StringVarP(&output, "output", "o", "text", "output: text or json")
	return cmd
}

func newTokenListCmd() *cobra.Command {
	var (
		conn   cliConnFlags
		output string
	)
	cmd := &cobra.Command{
		Use:     "list",
		Short:   "List join tokens (their secrets are never shown again)",
		Example: "  flotilla token list\n  flotilla token list -o json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := conn.connect()
			if err != nil {
				return err
			}
			defer c.Close()
			list, err := c.Tokens(cmd.Context())
			if err != nil {
				return err
			}
			if output == "json" {
				if list == nil {
					list = []protocol.TokenInfo{}
				}
				return cliWriteJSON(cmd, list)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tEXPIRES\tSTATE\tUSES\tFOR\tLABELS\tDESCRIPTION")
			for _, t := range list {
				state, uses, forName := "valid", fmt.Sprint(t.Uses), "-"
				if t.MaxUses > 0 {
					uses = fmt.Sprintf("%d/%d", t.Uses, t.MaxUses)
				}
				switch {
				case !time.Now().Before(t.Expires):
					state = "expired"
				case t.MaxUses > 0 && t.Uses >= t.MaxUses:
					state = "used up"
				}
				if t.For != "" {
					forName = t.For
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", t.ID, t.Expires.Local().Format(time.RFC3339), state, uses, forName, labelString(t.Labels), t.Description)
			}
			return tw.Flush()
		},
	}
	conn.register(cmd)
	cmd.Flags().StringVarP(&output, "output", "o", "table", "output: table or json")
	return cmd
}

func newTokenRevokeCmd() *cobra.Command {
	var conn cliConnFlags
	cmd := &cobra.Command{
		Use:     "revoke ID…",
		Short:   "Revoke join tokens; nodes that already joined keep working",
		Example: "  flotilla token revoke 1a2b3c4d",
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := conn.connect()
			if err != nil {
				return err
			}
			defer c.Close()
			for _, id := range args {
				if err := c.RevokeToken(cmd.Context(), id); err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "revoked %s\n", id)
			}
			return nil
		},
	}
	conn.register(cmd)
	return cmd
}
