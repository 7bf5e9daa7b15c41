package build

import (
	"archive/tar"
	"compress/gzip"
	"context"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/flotilla-dev/flotilla/protocol"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/validate"

	"github.com/flotilla-dev/flotilla/bundle/recipe"
	"github.com/flotilla-dev/flotilla/bundle/store"
)

// writeTree creates files under dir; a name ending in / is a directory.
func writeTree(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for name, content := range files {
		p := filepath.Join(dir, name)
		if strings.HasSuffix(name, "/") {
			if err := os.MkdirAll(p, 0o755); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		mode := os.FileMode(0o644)
		if strings.HasSuffix(name, ".sh") {
			mode = 0o755
		}
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
	}
}

func newStore(t *testing.T) *store.Store {
	t.Helper()
	st, err := store.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func build(t *testing.T, st *store.Store, dir string, opts Options) (*Result, v1.Image, *recipe.Recipe) {
	t.Helper()
	opts.ContextDir = dir
	res, err := Build(context.Background(), st, opts)
	if err != nil {
		t.Fatalf("build: %v", err)
	}
	img, _, err := st.Resolve(res.Descriptor.Digest.String())
	if err != nil {
		t.Fatal(err)
	}
	if err := validate.Image(img); err != nil {
		t.Fatalf("built image is not a valid OCI image: %v", err)
	}
	p, err := store.Plan(img)
	if err != nil {
		t.Fatal(err)
	}
	return res, img, p
}

// layerHeaders reads a stored gzip layer's tar headers (checking the gzip header has no mtime).
func layerHeaders(t *testing.T, st *store.Store, digest string) []*tar.Header {
	t.Helper()
	h, err := v1.NewHash(digest)
	if err != nil {
		t.Fatal(err)
	}
	rc, _, err := st.OpenBlob(h)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	zr, err := gzip.NewReader(rc)
	if err != nil {
		t.Fatal(err)
	}
	if !zr.ModTime.IsZero() && zr.ModTime.Unix() != 0 {
		t.Errorf("gzip header carries mtime %v", zr.ModTime)
	}
	tr := tar.NewReader(zr)
	var out []*tar.Header
	for {
		hd, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, hd)
	}
}

// layerFiles lists a layer's tar entries as "name mode".
func layerFiles(t *testing.T, st *store.Store, digest string) []string {
	t.Helper()
	var out []string
	for _, hd := range layerHeaders(t, st, digest) {
		if hd.Uid != 0 || hd.Gid != 0 || hd.ModTime.Unix() != 0 {
			t.Errorf("%s: uid %d gid %d mtime %v, want 0 0 1970", hd.Name, hd.Uid, hd.Gid, hd.ModTime)
		}
		out = append(out, hd.Name+" "+os.FileMode(hd.Mode).Perm().String())
	}
	return out
}

const fullKubefile = `FROM scratch
ARG VERSION=1
ENV DATA=/var/lib/app APP_VERSION=$VERSION
LABEL org.opencontainers.image.version=$VERSION
COPY bin/ /usr/local/bin/
ON master COPY conf/app.service.tmpl /etc/systemd/system/app.service
ON node COPY --chmod=0600 conf/ /etc/app/
RUN mkdir -p "$FLOTILLA_WORKSPACE/opt/app" && echo "$APP_VERSION $TARGETARCH" > "$FLOTILLA_WORKSPACE/opt/app/fetched"
RUN true
LABEL carried=elsewhere
ON master SERVICE app.service
ON node RUN app-join --data $DATA
ON ingress RUN echo custom
CMD app health
`

func fullContext(t *testing.T) string {
	dir := t.TempDir()
	writeTree(t, dir, map[string]string{
		"Kubefile":              fullKubefile,
		"bin/app.sh":            "#!/bin/sh\necho app\n",
		"bin/sub/tool":          "tool",
		"bin/empty/":            "",
		"conf/app.service.tmpl": "[Service]\nExecStart=/usr/local/bin/app --name {{ .Node.Name }}\n",
		"conf/app.yaml":         "a: 1\n",
		"conf/peer.conf.tmpl":   "peers={{ .Cluster.Masters }}\n",
	})
	return dir
}

func TestBuildPlanSemantics(t *testing.T) {
	st := newStore(t)
	dir := fullContext(t)
	_, img, p := build(t, st, dir, Options{Tags: []string{"app:1"}, BuildArgs: map[string]string{"VERSION": "7"}})

	if want := []string{"master", "node", "ingress"}; !reflect.DeepEqual(p.Roles, want) {
		t.Errorf("roles = %v, want %v", p.Roles, want)
	}
	if p.Env["APP_VERSION"] != "7" || p.Env["DATA"] != "/var/lib/app" || p.Labels["org.opencontainers.image.version"] != "7" {
		t.Errorf("env/labels = %v %v", p.Env, p.Labels)
	}
	type lay struct{ role, instr string }
	var got []lay
	for _, l := range p.Layers {
		got = append(got, lay{l.Role, l.Instruction})
		if !strings.HasPrefix(l.Digest, "sha256:") || !strings.HasPrefix(l.DiffID, "sha256:") || l.Size <= 0 || l.Seq == 0 {
			t.Errorf("layer fields incomplete: %+v", l)
		}
	}
	wantLayers := []lay{
		{"all", "COPY bin/ /usr/local/bin/"},
		{"node", "ON node COPY --chmod=0600 conf/ /etc/app/"},
		{"all", `RUN mkdir -p "$FLOTILLA_WORKSPACE/opt/app" && echo "$APP_VERSION $TARGETARCH" > "$FLOTILLA_WORKSPACE/opt/app/fetched"`},
	}
	if !reflect.DeepEqual(got, wantLayers) {
		t.Errorf("layers = %+v\nwant %+v", got, wantLayers)
	}
	m, _ := img.Manifest()
	for i, l := range m.Layers {
		if l.Digest.String() != p.Layers[i].Digest || l.MediaType != "application/vnd.oci.image.layer.v1.tar+gzip" {
			t.Errorf("manifest layer %d = %s %s, plan says %s", i, l.Digest, l.MediaType, p.Layers[i].Digest)
		}
	}
	// Every layer records what its tar holds, as the tar itself says.
	for _, l := range p.Layers {
		if want := tarContents(t, st, l.Digest); l.Contents == nil || *l.Contents != want {
			t.Errorf("layer %s (%s): recorded contents %+v, the tar holds %+v", l.Digest, l.Instruction, l.Contents, want)
		}
	}
	if files := layerFiles(t, st, p.Layers[0].Digest); !reflect.DeepEqual(files, []string{"usr/local/bin/app.sh -rwxr-xr-x", "usr/local/bin/empty/ -rwxr-xr-x", "usr/local/bin/sub/tool -rw-r--r--"}) {
		t.Errorf("bin layer = %q", files)
	}
	if files := layerFiles(t, st, p.Layers[1].Digest); !reflect.DeepEqual(files, []string{"etc/app/app.yaml -rw-------"}) {
		t.Errorf("node conf layer = %q (templates must not be in layers)", files)
	}
	if files := layerFiles(t, st, p.Layers[2].Digest); !reflect.DeepEqual(files, []string{"opt/app/fetched -rw-r--r--"}) {
		t.Errorf("RUN layer = %q", files)
	}
	wantT := []recipe.Template{
		{Role: "master", Path: "/etc/systemd/system/app.service", Mode: 0o644, Content: "[Service]\nExecStart=/usr/local/bin/app --name {{ .Node.Name }}\n", Seq: 6},
		{Role: "node", Path: "/etc/app/app.service", Mode: 0o600, ExplicitMode: true, Content: "[Service]\nExecStart=/usr/local/bin/app --name {{ .Node.Name }}\n", Seq: 7},
		{Role: "node", Path: "/etc/app/peer.conf", Mode: 0o600, ExplicitMode: true, Content: "peers={{ .Cluster.Masters }}\n", Seq: 7},
	}
	if !reflect.DeepEqual(p.Templates, wantT) {
		t.Errorf("templates = %+v\nwant %+v", p.Templates, wantT)
	}
	wantS := []recipe.Step{
		{Role: "master", Kind: recipe.KindService, Command: "app.service", Line: 11, Seq: 11},
		{Role: "node", Kind: recipe.KindRun, Command: "app-join --data $DATA", Line: 12, Seq: 12},
		{Role: "ingress", Kind: recipe.KindRun, Command: "echo custom", Line: 13, Seq: 13},
	}
	if !reflect.DeepEqual(p.Steps, wantS) {
		t.Errorf("steps = %+v\nwant %+v", p.Steps, wantS)
	}
	if p.Cmd == nil || *p.Cmd != (recipe.Step{Role: recipe.RoleMaster0, Kind: recipe.KindRun, Command: "app health", Line: 14, Seq: 14}) {
		t.Errorf("cmd = %+v", p.Cmd)
	}
	if len(p.Images) != 0 {
		t.Errorf("images = %v", p.Images)
	}
	if len(p.History) != 13 || p.History[3].Layer != p.Layers[0].Digest {
		t.Errorf("history = %+v", p.History)
	}
	cf, _ := img.ConfigFile()
	if cf.Architecture == "" || cf.OS != "linux" || len(cf.RootFS.DiffIDs) != 3 {
		t.Errorf("config platform/rootfs = %s/%s %v", cf.OS, cf.Architecture, cf.RootFS.DiffIDs)
	}
}

func TestBuildReproducibleAndCached(t *testing.T) {
	dir := fullContext(t)
	st1, st2 := newStore(t), newStore(t)
	r1, _, _ := build(t, st1, dir, Options{Tags: []string{"app:1"}})
	r2, _, _ := build(t, st2, dir, Options{Tags: []string{"app:1"}})
	if r1.Descriptor.Digest != r2.Descriptor.Digest {
		t.Fatalf("same inputs, different digests in two stores: %s vs %s", r1.Descriptor.Digest, r2.Descriptor.Digest)
	}
	before := snapshot(t, st1.Dir())
	r3, _, _ := build(t, st1, dir, Options{Tags: []string{"app:1"}})
	if r3.Descriptor.Digest != r1.Descriptor.Digest || r3.NewBlobs != 0 {
		t.Fatalf("unchanged rebuild: digest %s (was %s), %d new blobs", r3.Descriptor.Digest, r1.Descriptor.Digest, r3.NewBlobs)
	}
	if after := snapshot(t, st1.Dir()); !reflect.DeepEqual(before, after) {
		t.Errorf("unchanged rebuild wrote to the store:\nbefore %v\nafter  %v", before, after)
	}
}

// snapshot maps every file under dir (except lock files) to its size and mtime.
func snapshot(t *testing.T, dir string) map[string]string {
	out := map[string]string{}
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil || fi.IsDir() || strings.HasSuffix(p, ".lock") {
			return err
		}
		out[p] = fi.ModTime().String() + " " + string(rune(fi.Size()))
		return nil
	})
	return out
}

func TestChangedFileChangesOnlyItsLayer(t *testing.T) {
	st := newStore(t)
	dir := t.TempDir()
	writeTree(t, dir, map[string]string{
		"Kubefile": "FROM scratch\nCOPY a /opt/a\nCOPY b /opt/b\nCOPY c /opt/c\n",
		"a":        "a", "b": "b", "c": "c",
	})
	_, _, p1 := build(t, st, dir, Options{})
	writeTree(t, dir, map[string]string{"b": "b changed"})
	_, _, p2 := build(t, st, dir, Options{})
	for i, same := range []bool{true, false, true} {
		if (p1.Layers[i].Digest == p2.Layers[i].Digest) != same {
			t.Errorf("layer %d (%s): before %s after %s, want same=%v", i, p1.Layers[i].Instruction, p1.Layers[i].Digest, p2.Layers[i].Digest, same)
		}
	}
}

func TestBuildRefusesOutsideContext(t *testing.T) {
	parent := t.TempDir()
	dir := filepath.Join(parent, "ctx")
	writeTree(t, parent, map[string]string{"secret": "s", "ctx/ok": "ok"})
	if err := os.Symlink(filepath.Join(parent, "secret"), filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	cases := []struct{ kubefile, want string }{
		{"FROM scratch\nCOPY ../secret /x\n", "Kubefile:2: COPY: ../secret is outside the build context"},
		{"FROM scratch\nCOPY ok /x\nADD link /x\n", "Kubefile:3: ADD: link resolves to"},
		{"FROM scratch\nCOPY ok/../../secret /x\n", "outside the build context"},
		{"FROM scratch\nCOPY missing /x\n", "Kubefile:2: COPY: missing: no such file"},
		{"FROM scratch\nCOPY *.nothing /x/\n", "matches no file"},
		{"FROM scratch\nRUN exit 3\n", "Kubefile:2: RUN: \"exit 3\" failed"},
		{"FROM scratch\nIMAGE bad::ref\n", "Kubefile:2: IMAGE: invalid container image reference"},
		{"FROM nothing-here:1\n", "Kubefile:1: FROM: base image nothing-here:1"},
	}
	for _, c := range cases {
		st := newStore(t)
		writeTree(t, dir, map[string]string{"Kubefile": c.kubefile})
		before := snapshot(t, st.Dir())
		_, err := Build(context.Background(), st, Options{ContextDir: dir, Tags: []string{"x:1"}})
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: error %v, want %q", c.kubefile, err, c.want)
		}
		if after := snapshot(t, st.Dir()); !reflect.DeepEqual(before, after) {
			t.Errorf("%q: failed build changed the store", c.kubefile)
		}
	}
}

func TestFromInheritsBase(t *testing.T) {
	st := newStore(t)
	base := fullContext(t)
	build(t, st, base, Options{Tags: []string{"base:1"}})
	_, _, bp := build(t, st, base, Options{Tags: []string{"base:1"}})
	dir := t.TempDir()
	writeTree(t, dir, map[string]string{
		"Kubefile": "FROM base:1\nENV EXTRA=1\nON edge COPY x /opt/x\nON edge RUN use-x\nCLEANUP bye\nON edge CLEANUP undo-x\n",
		"x":        "x",
	})
	_, img, p := build(t, st, dir, Options{Tags: []string{"derived:1"}})
	if len(p.Layers) != len(bp.Layers)+1 || !reflect.DeepEqual(p.Layers[:len(bp.Layers)], bp.Layers) {
		t.Fatalf("derived layers = %+v, want base's %d then one", p.Layers, len(bp.Layers))
	}
	last := p.Layers[len(p.Layers)-1]
	if last.Role != "edge" || last.Seq <= 14 {
		t.Errorf("new layer %+v: want role edge and seq after the base's", last)
	}
	if !reflect.DeepEqual(p.Roles, []string{"master", "node", "ingress", "edge"}) || p.Cmd == nil || len(p.Steps) != 4 || p.Env["APP_VERSION"] != "1" || p.Env["EXTRA"] != "1" {
		t.Errorf("derived plan roles %v cmd %v steps %d env %v", p.Roles, p.Cmd, len(p.Steps), p.Env)
	}
	wantCleanup := []recipe.Step{{Role: recipe.RoleAll, Kind: recipe.KindRun, Command: "bye", Line: 5}, {Role: "edge", Kind: recipe.KindRun, Command: "undo-x", Line: 6}}
	if len(p.Cleanup) != 2 || p.Cleanup[0].Command != "bye" || p.Cleanup[0].Role != recipe.RoleAll || p.Cleanup[1].Command != "undo-x" || p.Cleanup[1].Role != "edge" || p.Cleanup[1].Line != 6 {
		t.Errorf("derived cleanup = %+v, want %+v", p.Cleanup, wantCleanup)
	}
	dir2 := t.TempDir()
	writeTree(t, dir2, map[string]string{"Kubefile": "FROM derived:1\nCLEANUP last\n"})
	_, _, p2 := build(t, st, dir2, Options{Tags: []string{"derived:2"}})
	if len(p2.Cleanup) != 3 || p2.Cleanup[0].Command != "bye" || p2.Cleanup[2].Command != "last" {
		t.Errorf("an image FROM derived:1 has cleanup %+v, want the base's two then its own", p2.Cleanup)
	}
	cf, _ := img.ConfigFile()
	nonEmpty := 0
	for _, h := range cf.History {
		if !h.EmptyLayer {
			nonEmpty++
		}
	}
	if nonEmpty != len(cf.RootFS.DiffIDs) {
		t.Errorf("history has %d layer entries for %d layers", nonEmpty, len(cf.RootFS.DiffIDs))
	}
}

func TestBuildRunCache(t *testing.T) {
	st := newStore(t)
	dir := t.TempDir()
	counter := filepath.Join(t.TempDir(), "runs")
	writeTree(t, dir, map[string]string{
		"Kubefile": "FROM scratch\nARG N=1\nRUN echo x >> " + counter + " && echo $N > $FLOTILLA_WORKSPACE/n\n",
	})
	runs := func() int {
		b, _ := os.ReadFile(counter)
		return strings.Count(string(b), "x")
	}
	build(t, st, dir, Options{})
	build(t, st, dir, Options{})
	if runs() != 1 {
		t.Fatalf("RUN ran %d times for two identical builds, want 1 (cached)", runs())
	}
	build(t, st, dir, Options{NoCache: true})
	if runs() != 2 {
		t.Fatalf("--no-cache: RUN ran %d times, want 2", runs())
	}
	_, _, p := build(t, st, dir, Options{BuildArgs: map[string]string{"N": "2"}})
	if runs() != 3 {
		t.Fatalf("changed ARG: RUN ran %d times, want 3", runs())
	}
	if len(p.Layers) != 1 {
		t.Fatalf("layers = %+v", p.Layers)
	}
}

func TestMultiArchIndex(t *testing.T) {
	st := newStore(t)
	dir := t.TempDir()
	writeTree(t, dir, map[string]string{
		"Kubefile": "FROM scratch\nCOPY a /opt/a\nRUN echo $TARGETARCH > $FLOTILLA_WORKSPACE/arch\n",
		"a":        "a",
	})
	plats, err := ParsePlatforms("linux/amd64,linux/arm64")
	if err != nil {
		t.Fatal(err)
	}
	res, err := Build(context.Background(), st, Options{ContextDir: dir, Tags: []string{"multi:1"}, Platforms: plats})
	if err != nil {
		t.Fatal(err)
	}
	if !res.Descriptor.MediaType.IsIndex() {
		t.Fatalf("media type %s, want an OCI index", res.Descriptor.MediaType)
	}
	idx, err := st.Index(res.Descriptor.Digest)
	if err != nil {
		t.Fatal(err)
	}
	if err := validate.Index(idx); err != nil {
		t.Fatalf("invalid index: %v", err)
	}
	var plans []*recipe.Recipe
	for _, arch := range []string{"amd64", "arm64"} {
		img, _, err := st.ResolvePlatform("multi:1", &v1.Platform{OS: "linux", Architecture: arch})
		if err != nil {
			t.Fatal(err)
		}
		cf, _ := img.ConfigFile()
		if cf.Architecture != arch {
			t.Errorf("config architecture %s, want %s", cf.Architecture, arch)
		}
		p, _ := store.Plan(img)
		plans = append(plans, p)
	}
	if plans[0].Layers[0].Digest != plans[1].Layers[0].Digest || plans[0].Layers[1].Digest == plans[1].Layers[1].Digest {
		t.Errorf("COPY layer should be shared and the arch-specific RUN layer should differ: %+v / %+v", plans[0].Layers, plans[1].Layers)
	}
	if _, err := ParsePlatforms("linux"); err == nil {
		t.Error("ParsePlatforms(linux): want error")
	}
}

func BenchmarkUnchangedRebuild(b *testing.B) {
	st, err := store.Open(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	dir, _ := filepath.Abs("../../examples/hello")
	opts := Options{ContextDir: dir, Tags: []string{"hello:bench"}}
	if _, err := Build(context.Background(), st, opts); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		res, err := Build(context.Background(), st, opts)
		if err != nil || res.NewBlobs != 0 {
			b.Fatalf("rebuild: %v, %d new blobs", err, res.NewBlobs)
		}
	}
}

// tarContents counts what a stored gzip layer holds.
func tarContents(t *testing.T, st *store.Store, digest string) protocol.LayerContents {
	t.Helper()
	var c protocol.LayerContents
	for _, hd := range layerHeaders(t, st, digest) {
		c.Entries++
		c.LongestPath = max(c.LongestPath, len(hd.Name))
		if hd.Typeflag == tar.TypeReg {
			c.FileBytes += hd.Size
		}
	}
	return c
}

// TestMembershipDirectives: QUORUM, JOIN, LEAVE, BACKUP and RESTORE land in the
// recipe with their roles and lines, and an image FROM it inherits them.
func TestMembershipDirectives(t *testing.T) {
	st := newStore(t)
	dir := t.TempDir()
	writeTree(t, dir, map[string]string{"Kubefile": "FROM scratch\nQUORUM master\nQUORUM master\n" +
		"ON master JOIN add {{ .Node.IP }}\nON master LEAVE remove {{ .Node.IP }}\n" +
		"ON master BACKUP save \"$FLOTILLA_BACKUP\"\nON master RESTORE stop\nON master RESTORE restore \"$FLOTILLA_BACKUP\"\n"})
	_, _, p := build(t, st, dir, Options{Tags: []string{"m:1"}})
	if !reflect.DeepEqual(p.Quorum, []string{"master"}) || !p.IsQuorum("master") || p.IsQuorum("node") {
		t.Errorf("quorum = %v, want [master] once", p.Quorum)
	}
	if len(p.Join) != 1 || p.Join[0].Role != "master" || p.Join[0].Command != "add {{ .Node.IP }}" || p.Join[0].Line != 4 {
		t.Errorf("join = %+v", p.Join)
	}
	if len(p.Leave) != 1 || p.Leave[0].Command != "remove {{ .Node.IP }}" || p.Leave[0].Line != 5 {
		t.Errorf("leave = %+v", p.Leave)
	}
	if p.Backup == nil || p.Backup.Role != "master" || p.Backup.Line != 6 {
		t.Errorf("backup = %+v", p.Backup)
	}
	if len(p.Restore) != 2 || p.Restore[0].Command != "stop" || p.Restore[1].Line != 8 {
		t.Errorf("restore = %+v", p.Restore)
	}
	if got := p.MemberRole([]string{"master"}); got != "master" {
		t.Errorf("MemberRole(master) = %q", got)
	}
	if got := p.MemberRole([]string{"node"}); got != "" {
		t.Errorf("MemberRole(node) = %q, want none", got)
	}
	dir2 := t.TempDir()
	writeTree(t, dir2, map[string]string{"Kubefile": "FROM m:1\nON master RESTORE start\n"})
	_, _, p2 := build(t, st, dir2, Options{Tags: []string{"m:2"}})
	if !p2.IsQuorum("master") || len(p2.Join) != 1 || len(p2.Leave) != 1 || p2.Backup == nil || len(p2.Restore) != 3 || p2.Restore[2].Command != "start" {
		t.Errorf("derived: quorum %v join %d leave %d backup %v restore %+v", p2.Quorum, len(p2.Join), len(p2.Leave), p2.Backup, p2.Restore)
	}
}
