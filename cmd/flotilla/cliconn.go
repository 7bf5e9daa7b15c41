package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/flotilla-dev/flotilla/controller/plane"
	"github.com/flotilla-dev/flotilla/protocol"
	"github.com/nats-io/nats.go"
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

// natsURL turns the --controller forms into a NATS URL.
func natsURL(s string) (string, error) {
	if !strings.Contains(s, "://") {
		s = "tls://" + s
	}
	u, err := url.Parse(s)
	if err != nil || u.Host == "" {
		return "", fmt.Errorf("--controller %q: want HOST, HOST:PORT or tls://HOST:PORT", s)
	}
	host := u.Host
	if u.Port() == "" {
		host = net.JoinHostPort(u.Hostname(), "4222")
	}
	switch u.Scheme {
	case "tls", "nats":
	case "https":
		// The join address was given: same host, the NATS port.
		host = net.JoinHostPort(u.Hostname(), "4222")
	default:
		return "", fmt.Errorf("--controller %q: scheme must be tls:// (NATS)", s)
	}
	return "tls://" + host, nil
}

// connect opens an admin NATS connection to the controller.
func (f *cliConnFlags) connect() (*nats.Conn, error) {
	path := f.credentials
	if path == "" {
		path = filepath.Join(f.dataDir, plane.FileAdminCreds)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("admin credentials: %w: run this on the controller's host, or copy its %s and pass --credentials FILE (or set FLOTILLA_CREDENTIALS)",
			err, filepath.Join("/var/lib/flotilla", plane.FileAdminCreds))
	}
	var cr protocol.Credentials
	if err := json.Unmarshal(data, &cr); err != nil {
		return nil, fmt.Errorf("%s: not a flotilla credential file: %w", path, err)
	}
	urls := cr.NATSURLs
	if f.controller != "" {
		u, err := natsURL(f.controller)
		if err != nil {
			return nil, err
		}
		urls = []string{u}
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(cr.CAPEM) {
		return nil, fmt.Errorf("%s: no CA certificate", path)
	}
	nc, err := nats.Connect(strings.Join(urls, ","), nats.UserInfo(cr.User, cr.Password),
		nats.Secure(&tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}),
		nats.Name("flotilla-cli"), nats.Timeout(5*time.Second), nats.DontRandomize(), nats.NoReconnect())
	if err != nil {
		return nil, fmt.Errorf("connect to controller at %s: %w (is `flotilla controller` running? check --controller)", strings.Join(urls, ", "), err)
	}
	return nc, nil
}

// adminCall sends one admin request and decodes the reply body into out.
// onStream, if set, receives intermediate messages before the reply: they and
// the reply arrive on one inbox, so none is lost or reordered.
func adminCall(ctx context.Context, nc *nats.Conn, name string, body, out any, timeout time.Duration, onStream func([]byte)) error {
	req := protocol.AdminRequest{}
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		req.Body = b
	}
	inbox := nc.NewInbox()
	if onStream != nil {
		req.Stream = inbox
	}
	sub, err := nc.SubscribeSync(inbox)
	if err != nil {
		return err
	}
	defer sub.Unsubscribe()
	data, _ := json.Marshal(req)
	if err := nc.PublishRequest(protocol.AdminSubject(name), inbox, data); err != nil {
		return fmt.Errorf("admin %s: %w", name, err)
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		m, err := sub.NextMsgWithContext(ctx)
		if err != nil {
			if errors.Is(err, nats.ErrConnectionClosed) || errors.Is(err, nats.ErrNoServers) || !nc.IsConnected() {
				return &controllerLostError{call: name, err: err}
			}
			return fmt.Errorf("admin %s: no answer from the controller: %w", name, err)
		}
		if m.Header.Get("Status") == "503" {
			return fmt.Errorf("admin %s: the controller is not answering (starting up?)", name)
		}
		if m.Header.Get(protocol.HeaderStream) != "" {
			if onStream != nil {
				onStream(m.Data)
			}
			continue
		}
		var reply protocol.AdminReply
		if err := json.Unmarshal(m.Data, &reply); err != nil {
			return fmt.Errorf("admin %s reply: %w", name, err)
		}
		if !reply.OK {
			return errors.New(reply.Error)
		}
		if out != nil && len(reply.Body) > 0 {
			if err := json.Unmarshal(reply.Body, out); err != nil {
				return fmt.Errorf("admin %s reply: %w", name, err)
			}
		}
		return nil
	}
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

// controllerLostError says the connection to the controller ended while a
// call waited for its answer (the controller stopped or crashed).
type controllerLostError struct {
	call string
	err  error
}

func (e *controllerLostError) Error() string {
	return fmt.Sprintf("admin %s: lost the controller while waiting for its answer: %v", e.call, e.err)
}

func (e *controllerLostError) Unwrap() error { return e.err }
