package lvscare

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"text/template"
)

// templateData mirrors the data flotilla hands *.tmpl files at rollout.
type templateData struct {
	Node struct {
		Name, IP, Arch string
		IPs            []string
		Index          int
		Labels         map[string]string
		Roles          []string
	}
	Cluster struct {
		Name, VIP      string
		Masters, Nodes []string
	}
	Env map[string]string
}

func render(t *testing.T, file string, data templateData) string {
	t.Helper()
	tmpl, err := template.ParseFiles(file)
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	if err := tmpl.Execute(&b, data); err != nil {
		t.Fatalf("render %s: %v", file, err)
	}
	return b.String()
}

func TestTemplatesRenderAValidConfig(t *testing.T) {
	var d templateData
	d.Cluster.Name, d.Cluster.VIP = "prod-etcd", "10.103.97.2"
	d.Cluster.Masters = []string{"10.0.0.11", "10.0.0.12", "10.0.0.13"}
	tests := []struct {
		name         string
		env          map[string]string
		wantBackends []string
		wantVIP      string
		wantHealth   string
	}{
		{"etcd defaults", nil, []string{"10.0.0.11:2379", "10.0.0.12:2379", "10.0.0.13:2379"}, "10.103.97.2:2379", "http"},
		{"apiserver via env", map[string]string{"LVSCARE_PORT": "6443", "LVSCARE_HEALTH": "https", "LVSCARE_HEALTH_PATH": "/healthz"},
			[]string{"10.0.0.11:6443", "10.0.0.12:6443", "10.0.0.13:6443"}, "10.103.97.2:6443", "https"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d.Env = tt.env
			if d.Env == nil {
				d.Env = map[string]string{}
			}
			out := render(t, "lvscare.yaml.tmpl", d)
			p := filepath.Join(t.TempDir(), "lvscare.yaml")
			if err := os.WriteFile(p, []byte(out), 0o600); err != nil {
				t.Fatal(err)
			}
			c, err := LoadConfig(p)
			if err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
			svcs, err := c.WithDefaults().Validate()
			if err != nil {
				t.Fatalf("rendered config is invalid: %v\n%s", err, out)
			}
			if len(svcs) != 1 || svcs[0].VIP.String() != tt.wantVIP || len(svcs[0].Backends) != len(tt.wantBackends) {
				t.Fatalf("services %+v\n%s", svcs, out)
			}
			for i, b := range svcs[0].Backends {
				if b.String() != tt.wantBackends[i] {
					t.Errorf("backend %d = %s, want %s", i, b, tt.wantBackends[i])
				}
			}
			if c.Health.Protocol != tt.wantHealth {
				t.Errorf("health %q, want %q", c.Health.Protocol, tt.wantHealth)
			}
		})
	}
	d.Env = map[string]string{}
	unit := render(t, "flotilla-lvscare.service.tmpl", d)
	for _, want := range []string{"ExecStart=/usr/local/bin/flotilla lvscare --config /etc/flotilla/lvscare.yaml", "Restart=always", "VIP 10.103.97.2", "[Install]"} {
		if !strings.Contains(unit, want) {
			t.Errorf("unit lacks %q:\n%s", want, unit)
		}
	}
}
