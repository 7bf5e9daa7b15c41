package client_test

import (
	"context"
	"errors"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flotilla-dev/flotilla/client"
	"github.com/flotilla-dev/flotilla/controller"
	"github.com/flotilla-dev/flotilla/protocol"
)

func TestParseAddress(t *testing.T) {
	for _, tc := range []struct{ in, want, err string }{
		{in: "10.0.0.1", want: "tls://10.0.0.1:4222"},
		{in: "10.0.0.1:5222", want: "tls://10.0.0.1:5222"},
		{in: "tls://ctl.example:4333", want: "tls://ctl.example:4333"},
		{in: "nats://ctl.example", want: "tls://ctl.example:4222"},
		{in: "https://10.0.0.1:9443", want: "tls://10.0.0.1:4222"},
		{in: "[fd00::1]", want: "tls://[fd00::1]:4222"},
		{in: "http://10.0.0.1", err: "scheme must be tls://"},
		{in: "tls://", err: "want HOST, HOST:PORT or tls://HOST:PORT"},
	} {
		got, err := client.ParseAddress(tc.in)
		switch {
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("ParseAddress(%q) = %q, %v; want an error with %q", tc.in, got, err, tc.err)
		case tc.err == "" && (err != nil || got != tc.want):
			t.Errorf("ParseAddress(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
		if err != nil && strings.Contains(err.Error(), "--") {
			t.Errorf("ParseAddress(%q): the library's error names a CLI flag: %v", tc.in, err)
		}
	}
}

// TestConnectErrors: a missing or bad credential file is a CredentialsError
// naming the file (not a CLI flag: the CLI adds that).
func TestConnectErrors(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.creds")
	if err := os.WriteFile(bad, []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	noCA := filepath.Join(dir, "noca.creds")
	if err := os.WriteFile(noCA, []byte(`{"user":"admin","password":"x","natsURLs":["tls://127.0.0.1:1"]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		cfg  client.Config
		want string
		is   error
	}{
		{"missing file", client.Config{CredentialsFile: filepath.Join(dir, "missing.creds")}, "missing.creds", fs.ErrNotExist},
		{"data dir without creds", client.Config{DataDir: dir}, filepath.Join(dir, protocol.AdminCredsFile), fs.ErrNotExist},
		{"not JSON", client.Config{CredentialsFile: bad}, "not a flotilla credential file", nil},
		{"no CA", client.Config{CredentialsFile: noCA}, "no CA certificate", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := client.Connect(tc.cfg)
			if err == nil {
				c.Close()
				t.Fatal("connected")
			}
			var ce *client.CredentialsError
			if !errors.As(err, &ce) || !strings.Contains(err.Error(), tc.want) || tc.is != nil && !errors.Is(err, tc.is) {
				t.Errorf("error %v: want a CredentialsError with %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "--") {
				t.Errorf("the library's error names a CLI flag: %v", err)
			}
		})
	}
}

// TestAdminActions runs a whole controller in this process (controller.New,
// the call `flotilla controller` makes) and performs each admin action that
// needs no node through the client.
func TestAdminActions(t *testing.T) {
	dir := t.TempDir()
	ctl, err := controller.New(controller.Options{DataDir: filepath.Join(dir, "controller"), ImageStore: filepath.Join(dir, "images"),
		Listen: "127.0.0.1:0", HTTPListen: "127.0.0.1:0", Advertise: "127.0.0.1",
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := ctl.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer ctl.Close()

	c, err := client.Connect(client.Config{DataDir: filepath.Join(dir, "controller")})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	if nodes, err := c.Nodes(ctx); err != nil || len(nodes) != 0 {
		t.Errorf("Nodes = %v, %v; want none", nodes, err)
	}
	ti, err := c.CreateToken(ctx, protocol.TokenCreate{TTL: time.Hour, Uses: 2, For: "web-1", Labels: map[string]string{"rack": "r7"}})
	if err != nil {
		t.Fatal(err)
	}
	if ti.Token == "" || ti.CAHash != ctl.CAHash() || !strings.Contains(ti.Bootstrap, "--token") {
		t.Errorf("CreateToken = %+v", ti)
	}
	list, err := c.Tokens(ctx)
	if err != nil || len(list) != 1 || list[0].ID != ti.ID || list[0].Token != "" || list[0].MaxUses != 2 || list[0].For != "web-1" || list[0].Labels["rack"] != "r7" {
		t.Errorf("Tokens = %+v, %v; want the one token, without its secret", list, err)
	}
	if err := c.RevokeToken(ctx, ti.ID); err != nil {
		t.Errorf("RevokeToken: %v", err)
	}
	if list, err := c.Tokens(ctx); err != nil || len(list) != 0 {
		t.Errorf("Tokens after revoke = %+v, %v", list, err)
	}
	if err := c.RemoveNode(ctx, "nope"); err == nil || !strings.Contains(err.Error(), "nope") {
		t.Errorf("RemoveNode(nope) = %v; want an error naming it", err)
	}
	if _, err := c.LabelNode(ctx, protocol.NodesLabel{Name: "nope", Set: map[string]string{"a": "b"}}); err == nil {
		t.Error("LabelNode(nope): no error")
	}
	if st, err := c.Status(ctx, ""); err != nil || len(st) != 0 {
		t.Errorf("Status = %+v, %v; want no clusters", st, err)
	}
	if _, err := c.Attach(ctx, "ghost", nil); err == nil || !strings.Contains(err.Error(), "ghost") {
		t.Errorf("Attach(ghost) = %v; want an error naming it", err)
	}
	cf := []byte("apiVersion: flotilla.dev/v1\nkind: Cluster\nmetadata: {name: demo}\nspec:\n  image: missing:1\n  hosts: [{names: [n1], roles: [master]}]\n")
	if _, err := c.Plan(ctx, protocol.ApplyRequest{Clusterfile: cf, Path: "Clusterfile"}); err == nil || !strings.Contains(err.Error(), "missing:1") {
		t.Errorf("Plan of an image not in the store = %v; want an error naming it", err)
	}
	if _, err := c.Apply(ctx, protocol.ApplyRequest{Clusterfile: []byte("kind: nonsense"), Path: "bad.yaml"}, nil); err == nil || !strings.Contains(err.Error(), "bad.yaml") {
		t.Errorf("Apply of a bad Clusterfile = %v; want an error naming the file", err)
	}
	if _, err := c.Exec(ctx, protocol.ExecRequest{Selector: protocol.Selector{All: true}, Command: []string{"true"}, Timeout: time.Second}, nil); err == nil || !strings.Contains(err.Error(), "no node has joined") {
		t.Errorf("Exec on an empty fleet = %v; want no node has joined", err)
	}
	if evs, err := c.Logs(ctx, protocol.LogsRequest{Node: "nope"}); err == nil && len(evs) != 0 {
		t.Errorf("Logs(nope) = %v", evs)
	}
}
