package packaging_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flotilla-dev/flotilla/e2e/fleettest"
	"github.com/flotilla-dev/flotilla/packaging"
	"github.com/flotilla-dev/flotilla/sandbox"
)

func TestDebVersion(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"v1.2.3", "1.2.3"},
		{"1.2.3", "1.2.3"},
		{"v1.2.3-4-gabc1234", "1.2.3+4.gabc1234"},
		{"v1.2.3-4-gabc1234-dirty", "1.2.3+4.gabc1234.dirty"},
		{"abc1234", "0.0.0~git.abc1234"},
		{"abc1234-dirty", "0.0.0~git.abc1234.dirty"},
		{"dev", "0.0.0~git.dev"},
		{"", "0.0.0~git.dev"},
	} {
		if got := packaging.DebVersion(tc.in); got != tc.want {
			t.Errorf("DebVersion(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func buildDeb(t *testing.T, arch string) string {
	t.Helper()
	dir := t.TempDir()
	bin := filepath.Join(dir, "flotilla-linux-"+arch)
	if err := os.WriteFile(bin, []byte(fakeAgent), 0o755); err != nil {
		t.Fatal(err)
	}
	deb, err := packaging.BuildDeb(packaging.DebOptions{Version: "v1.2.3-4-gabc1234", Arch: arch, Binary: bin, OutDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	return deb
}

func TestBuildDeb(t *testing.T) {
	if _, err := exec.LookPath("dpkg-deb"); err != nil {
		t.Skip("dpkg-deb not installed (Debian only)")
	}
	for _, arch := range packaging.Arches {
		t.Run(arch, func(t *testing.T) {
			deb := buildDeb(t, arch)
			if filepath.Base(deb) != "flotilla-agent_1.2.3+4.gabc1234_"+arch+".deb" {
				t.Errorf("file name %s", filepath.Base(deb))
			}
			info, err := exec.Command("dpkg-deb", "-I", deb).CombinedOutput()
			if err != nil {
				t.Fatalf("dpkg-deb -I: %v\n%s", err, info)
			}
			for _, want := range []string{"Package: flotilla-agent", "Architecture: " + arch, "Version: 1.2.3+4.gabc1234", "Depends: systemd", "postinst", "prerm", "postrm"} {
				if !strings.Contains(string(info), want) {
					t.Errorf("control lacks %q:\n%s", want, info)
				}
			}
			list, err := exec.Command("dpkg-deb", "-c", deb).CombinedOutput()
			if err != nil {
				t.Fatalf("dpkg-deb -c: %v\n%s", err, list)
			}
			for _, want := range []string{"-rwxr-xr-x root/root", "./usr/bin/flotilla", "./lib/systemd/system/flotilla-agent.service", "-rw------- root/root", "./etc/flotilla/agent.env"} {
				if !strings.Contains(string(list), want) {
					t.Errorf("contents lack %q:\n%s", want, list)
				}
			}
		})
	}
	if _, err := packaging.BuildDeb(packaging.DebOptions{Version: "1.0.0", Arch: "mips", Binary: "/bin/sh", OutDir: t.TempDir()}); err == nil {
		t.Error("BuildDeb accepted arch mips")
	}
	if _, err := packaging.BuildDeb(packaging.DebOptions{Version: "1.0.0", Arch: "amd64", Binary: "/nonexistent", OutDir: t.TempDir()}); err == nil || !strings.Contains(err.Error(), "make build-all") {
		t.Errorf("missing binary: %v", err)
	}
}

// The .deb installs, starts once configured, and purges cleanly on a real node.
func TestDebOnNode(t *testing.T) {
	f := fleettest.New(t, sandbox.Options{Name: "fltek", Subnet: "10.77.10.96/28", N: 1})
	deb := buildDeb(t, "amd64")
	b, err := os.ReadFile(deb)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(f.Root("node1"), "root/agent.deb"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	run := func(cmd string) string {
		t.Helper()
		out, err := f.Exec(ctx, "node1", "sh", "-c", cmd)
		if err != nil {
			t.Fatal(err)
		}
		return string(out)
	}
	if out := run("dpkg -i /root/agent.deb"); !strings.Contains(out, "configure /etc/flotilla/agent.env") {
		t.Errorf("unconfigured install does not say what to do next:\n%s", out)
	}
	if got := run("systemctl show -p LoadState --value flotilla-agent"); strings.TrimSpace(got) != "loaded" {
		t.Errorf("unit LoadState %q", got)
	}
	// Configure, reinstall: postinst enables and starts the agent.
	run(`sed -i 's|^FLOTILLA_CONTROLLER=.*|FLOTILLA_CONTROLLER=https://10.77.10.97:9443|; s|^FLOTILLA_TOKEN=.*|FLOTILLA_TOKEN=good-token|' /etc/flotilla/agent.env && touch /etc/flotilla/ca.crt`)
	run("dpkg -i /root/agent.deb")
	if got := run("systemctl is-active flotilla-agent; systemctl is-enabled flotilla-agent"); got != "active\nenabled\n" {
		t.Errorf("after configuring: %q", got)
	}
	run("dpkg --purge flotilla-agent")
	if got, _ := f.Exec(ctx, "node1", "systemctl", "show", "-p", "LoadState", "--value", "flotilla-agent"); strings.TrimSpace(string(got)) != "not-found" {
		t.Errorf("unit still known after purge: %q", got)
	}
	for _, p := range []string{"usr/bin/flotilla", "var/lib/flotilla-agent", "etc/flotilla/agent.env"} {
		if _, err := os.Stat(filepath.Join(f.Root("node1"), p)); err == nil {
			t.Errorf("%s left after purge", p)
		}
	}
}
