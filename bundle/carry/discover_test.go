package carry_test

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/flotilla-dev/flotilla/bundle/carry"
)

func TestDiscover(t *testing.T) {
	dir := t.TempDir()
	files := map[string]string{
		"k8s/deploy.yaml": `apiVersion: apps/v1
kind: Deployment
spec:
  template:
    spec:
      containers:
        - name: web
          image: nginx:1.27   # the web server
        - image: "registry.local:5000/app/api@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
      initContainers:
        - image: '{{ .Values.init }}'
        - image: $INIT_IMAGE
`,
		"compose.yml": "services:\n  db:\n    image: postgres:16\n  web:\n    image: nginx:1.27\n",
		"pod.json":    `{"spec": {"containers": [{"name": "x", "image": "quay.io/prometheus/node-exporter:v1.8.0",}]}}` + "\n",
		"chart/values.yaml": `image:
  registry: ghcr.io
  repository: acme/worker
  tag: "2.1"
other:
  image:
    repository: "{{ .Values.x }}"
`,
		"chart/templates/job": "      image: busybox:1.36\n      image: {{ .Values.image }}\n",
		"README.md":           "image: not-scanned:1\n",
		"big.bin":             "image: nope\n",
	}
	for n, c := range files {
		p := filepath.Join(dir, n)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	found, err := carry.Discover(dir)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, f := range found {
		got = append(got, f.Name+" "+f.File)
	}
	want := []string{
		"docker.io/library/busybox:1.36 chart/templates/job",
		"ghcr.io/acme/worker:2.1 chart/values.yaml",
		"docker.io/library/postgres:16 compose.yml",
		"docker.io/library/nginx:1.27 compose.yml",
		"registry.local:5000/app/api@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef k8s/deploy.yaml",
		"quay.io/prometheus/node-exporter:v1.8.0 pod.json",
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("found\n%q\nwant\n%q", got, want)
	}
	if found[3].Line != 5 {
		t.Errorf("nginx found at line %d of compose.yml, want 5", found[3].Line)
	}
}
