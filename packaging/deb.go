package packaging

import (
	"embed"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/goreleaser/nfpm/v2"
	_ "github.com/goreleaser/nfpm/v2/deb" // registers the deb packager
	"github.com/goreleaser/nfpm/v2/files"
)

//go:embed deb
var debAssets embed.FS

// DebOptions describe one agent .deb.
type DebOptions struct {
	Version string // flotilla's version (git describe); made Debian-compatible
	Arch    string // amd64 or arm64
	Binary  string // the linux/Arch flotilla binary to ship as /usr/bin/flotilla
	OutDir  string
}

// BuildDeb writes flotilla-agent_VERSION_ARCH.deb into OutDir with nfpm: the
// binary, the agent unit, a config file for the controller address and token,
// and maintainer scripts that reload systemd. It returns the file's path.
func BuildDeb(o DebOptions) (string, error) {
	if !knownArch(o.Arch) {
		return "", fmt.Errorf("deb arch %q: want one of %s", o.Arch, strings.Join(Arches, ", "))
	}
	if _, err := os.Stat(o.Binary); err != nil {
		return "", fmt.Errorf("deb for %s: agent binary: %w (run make build-all first)", o.Arch, err)
	}
	tmp, err := os.MkdirTemp("", "flotilla-deb-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp)
	assets := map[string]string{}
	for _, name := range []string{"flotilla-agent.service", "agent.env", "postinst", "prerm", "postrm"} {
		b, err := debAssets.ReadFile("deb/" + name)
		if err != nil {
			return "", err
		}
		assets[name] = filepath.Join(tmp, name)
		if err := os.WriteFile(assets[name], b, 0o644); err != nil {
			return "", err
		}
	}
	info := nfpm.WithDefaults(&nfpm.Info{
		Name:          "flotilla-agent",
		Arch:          o.Arch,
		Platform:      "linux",
		Version:       DebVersion(o.Version),
		VersionSchema: "none",
		Section:       "admin",
		Priority:      "optional",
		Maintainer:    "flotilla developers <flotilla@flotilla.dev>",
		Description:   "flotilla agent: runs a flotilla controller's tasks on this node\nJoins a flotilla controller, fetches cluster-image layers from peers and runs\nthe steps of a rollout locally.",
		Homepage:      "https://github.com/flotilla-dev/flotilla",
		License:       "Apache-2.0",
		Overridables: nfpm.Overridables{
			Depends: []string{"systemd"},
			Contents: files.Contents{
				{Source: o.Binary, Destination: "/usr/bin/flotilla", FileInfo: &files.ContentFileInfo{Mode: 0o755}},
				{Source: assets["flotilla-agent.service"], Destination: "/lib/systemd/system/" + UnitName, FileInfo: &files.ContentFileInfo{Mode: 0o644}},
				{Source: assets["agent.env"], Destination: ConfigDir + "/agent.env", Type: files.TypeConfigNoReplace, FileInfo: &files.ContentFileInfo{Mode: 0o600}},
				{Destination: DefaultDataDir, Type: files.TypeDir, FileInfo: &files.ContentFileInfo{Mode: 0o700}},
			},
			Scripts: nfpm.Scripts{PostInstall: assets["postinst"], PreRemove: assets["prerm"], PostRemove: assets["postrm"]},
		},
	})
	if err := nfpm.PrepareForPackager(info, "deb"); err != nil {
		return "", fmt.Errorf("deb for %s: %w", o.Arch, err)
	}
	pkg, err := nfpm.Get("deb")
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(o.OutDir, 0o755); err != nil {
		return "", err
	}
	out := filepath.Join(o.OutDir, pkg.ConventionalFileName(info))
	f, err := os.Create(out)
	if err != nil {
		return "", err
	}
	if err := pkg.Package(info, f); err != nil {
		f.Close()
		os.Remove(out)
		return "", fmt.Errorf("deb for %s: %w", o.Arch, err)
	}
	return out, f.Close()
}

var (
	semverRE   = regexp.MustCompile(`^v?([0-9]+\.[0-9]+\.[0-9]+)(.*)$`)
	debBadChar = regexp.MustCompile(`[^A-Za-z0-9.+~]+`)
)

// DebVersion turns `git describe` output into a Debian upstream version: it
// must start with a digit and may not contain '-' (that separates the Debian
// revision). v1.2.3-4-gabc -> 1.2.3+4.gabc; abc1234-dirty -> 0.0.0~git.abc1234.dirty.
func DebVersion(v string) string {
	if m := semverRE.FindStringSubmatch(v); m != nil {
		rest := strings.Trim(debBadChar.ReplaceAllString(m[2], "."), ".")
		if rest == "" {
			return m[1]
		}
		return m[1] + "+" + rest
	}
	rest := strings.Trim(debBadChar.ReplaceAllString(v, "."), ".")
	if rest == "" {
		rest = "dev"
	}
	return "0.0.0~git." + rest
}
