package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/flotilla-dev/flotilla/client"
	"github.com/flotilla-dev/flotilla/protocol"
	"github.com/spf13/cobra"
)

// cliConnFlags locate a running controller and the admin credentials.
type cliConnFlags struct {
	controller  string
	credentials string
	dataDir     string
}

func (f *cliConnFlags) register(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.controller, "controller", os.Getenv("FLOTILLA_CONTROLLER"),
		"controller address: HOST, HOST:PORT or tls://HOST:PORT of its NATS listener (default port 4222; $FLOTILLA_CONTROLLER; default: the URL in the credential file)")
	cmd.Flags().StringVar(&f.credentials, "credentials", os.Getenv("FLOTILLA_CREDENTIALS"),
		"admin credential file ($FLOTILLA_CREDENTIALS; default: <data-dir>/admin.creds)")
	cmd.Flags().StringVar(&f.dataDir, "data-dir", envOr("FLOTILLA_DATA_DIR", "/var/lib/flotilla"),
		"the controller's data dir, to find admin.creds when on the controller's host")
}

// connect opens an admin connection to the controller; its errors name the
// flags and variables that fix them.
func (f *cliConnFlags) connect() (*client.Client, error) {
	c, err := client.Connect(client.Config{CredentialsFile: f.credentials, DataDir: f.dataDir, Controller: f.controller, Name: "flotilla-cli"})
	var credErr *client.CredentialsError
	var connErr *client.ConnectError
	switch {
	case err == nil:
		return c, nil
	case errors.As(err, &credErr) && errors.Is(err, fs.ErrNotExist), errors.As(err, &credErr) && errors.Is(err, fs.ErrPermission):
		return nil, fmt.Errorf("%w: run this on the controller's host, or copy its %s and pass --credentials FILE (or set FLOTILLA_CREDENTIALS)",
			err, filepath.Join(client.DefaultDataDir, protocol.AdminCredsFile))
	case errors.As(err, &connErr):
		return nil, fmt.Errorf("%w (is `flotilla controller` running? check --controller)", err)
	case errors.As(err, &credErr):
		return nil, err
	}
	return nil, fmt.Errorf("--controller: %w", err)
}

// parseLabels reads "k=v,k2=v2".
func parseLabels(s string) (map[string]string, error) {
	out := map[string]string{}
	if strings.TrimSpace(s) == "" {
		return out, nil
	}
	for _, kv := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(kv), "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("label %q: want key=value", kv)
		}
		out[k] = v
	}
	return out, nil
}

func cliWriteJSON(cmd *cobra.Command, v any) error {
	enc := json.NewEncoder(cmd.OutOrStdout())
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
