package unpack

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
)

// ent is one crafted tar entry.
type ent struct {
	name string
	typ  byte
	body string
	link string
	mode int64
}

func mkTar(t testing.TB, ents ...ent) []byte {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, e := range ents {
		h := &tar.Header{Name: e.name, Typeflag: e.typ, Linkname: e.link, Mode: e.mode, Size: int64(len(e.body))}
		if h.Mode == 0 {
			h.Mode = 0o644
		}
		if e.typ != tar.TypeReg {
			h.Size = 0
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if e.typ == tar.TypeReg {
			if _, err := tw.Write([]byte(e.body)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func digestOf(b []byte) string {
	s := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(s[:])
}

func gz(t testing.TB, b []byte) []byte {
	var out bytes.Buffer
	w := gzip.NewWriter(&out)
	w.Write(b)
	w.Close()
	return out.Bytes()
}

func zst(t testing.TB, b []byte) []byte {
	w, err := zstd.NewWriter(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	return w.EncodeAll(b, nil)
}

// sandbox is a parent directory holding the root and an outside directory with a
// sentinel file that no unpack may touch.
type sandbox struct{ parent, root, outside string }

func newSandbox(t testing.TB) sandbox {
	t.Helper()
	parent := t.TempDir()
	s := sandbox{parent: parent, root: filepath.Join(parent, "root"), outside: filepath.Join(parent, "outside")}
	for _, d := range []string{s.root, s.outside} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(s.outside, "sentinel"), []byte("keep"), 0o644); err != nil {
		t.Fatal(err)
	}
	return s
}

// planted is the name tests give a symlink they plant in the root to point outside it.
const planted = "out"

// checkContained fails if anything outside the root changed or a symlink in the root
// resolves outside it.
func (s sandbox) checkContained(t testing.TB) {
	t.Helper()
	var names []string
	filepath.WalkDir(s.parent, func(p string, d fs.DirEntry, err error) error {
		if p == s.root {
			return filepath.SkipDir
		}
		names = append(names, strings.TrimPrefix(p, s.parent))
		return nil
	})
	if want := []string{"", "/outside", "/outside/sentinel"}; !slices.Equal(names, want) {
		t.Fatalf("outside the root: %q, want %q", names, want)
	}
	if b, err := os.ReadFile(filepath.Join(s.outside, "sentinel")); err != nil || string(b) != "keep" {
		t.Fatalf("sentinel changed: %q %v", b, err)
	}
	r, err := os.OpenRoot(s.root)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	filepath.WalkDir(s.root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.Type()&fs.ModeSymlink == 0 {
			return nil
		}
		rel, _ := filepath.Rel(s.root, p)
		if rel == planted {
			return nil
		}
		if _, err := r.Stat(rel); err != nil && strings.Contains(err.Error(), "escapes") {
			target, _ := os.Readlink(p)
			t.Fatalf("symlink %s -> %s escapes the root", rel, target)
		}
		return nil
	})
}

func TestUnpackGood(t *testing.T) {
	layer := mkTar(t,
		ent{name: "./", typ: tar.TypeDir, mode: 0o755},
		ent{name: "usr/", typ: tar.TypeDir, mode: 0o755},
		ent{name: "usr/local/bin/tool", typ: tar.TypeReg, body: "#!/bin/sh\n", mode: 0o755},
		ent{name: "etc/secret", typ: tar.TypeReg, body: "s3cret", mode: 0o600},
		ent{name: "usr/local/bin/tool2", typ: tar.TypeLink, link: "usr/local/bin/tool"},
		ent{name: "usr/bin/t", typ: tar.TypeSymlink, link: "../local/bin/tool"},
		ent{name: "usr/bin/abs", typ: tar.TypeSymlink, link: "/usr/local/bin/tool"},
		ent{name: "etc/secret", typ: tar.TypeReg, body: "s3cret2", mode: 0o640}, // a later entry wins
	)
	for name, blob := range map[string][]byte{"plain": layer, "gzip": gz(t, layer), "zstd": zst(t, layer)} {
		t.Run(name, func(t *testing.T) {
			s := newSandbox(t)
			recs, err := Unpack(context.Background(), bytes.NewReader(blob), digestOf(blob), s.root)
			if err != nil {
				t.Fatal(err)
			}
			s.checkContained(t)
			got := map[string]Record{}
			for _, r := range recs {
				got[r.Path] = r
			}
			if r := got["usr/local/bin/tool"]; r.Kind != KindFile || r.Mode != 0o755 || r.Digest != digestOf([]byte("#!/bin/sh\n")) {
				t.Errorf("tool record %+v", r)
			}
			if r := got["etc/secret"]; r.Mode != 0o640 || r.Digest != digestOf([]byte("s3cret2")) {
				t.Errorf("secret record %+v", r)
			}
			if fi, err := os.Stat(filepath.Join(s.root, "etc/secret")); err != nil || fi.Mode().Perm() != 0o640 {
				t.Errorf("etc/secret mode: %v %v", fi, err)
			}
			if r := got["usr/bin/abs"]; r.Kind != KindSymlink || r.Target != "../local/bin/tool" {
				t.Errorf("absolute symlink not rewritten relative: %+v", r)
			}
			if b, err := os.ReadFile(filepath.Join(s.root, "usr/bin/abs")); err != nil || string(b) != "#!/bin/sh\n" {
				t.Errorf("read through usr/bin/abs: %q %v", b, err)
			}
			a, _ := os.Stat(filepath.Join(s.root, "usr/local/bin/tool"))
			b, _ := os.Stat(filepath.Join(s.root, "usr/local/bin/tool2"))
			if !os.SameFile(a, b) || got["usr/local/bin/tool2"].Kind != KindHardlink {
				t.Errorf("hardlink not placed as a link: %+v", got["usr/local/bin/tool2"])
			}
			if r := got["usr/local"]; !r.Created || r.Kind != KindDir {
				t.Errorf("usr/local dir record %+v", r)
			}
			if entries, _ := os.ReadDir(filepath.Join(s.root, "usr/local/bin")); len(entries) != 2 {
				t.Errorf("temporary files left behind: %v", entries)
			}
		})
	}
}

func TestUnpackDigestMismatch(t *testing.T) {
	s := newSandbox(t)
	blob := mkTar(t, ent{name: "etc/x", typ: tar.TypeReg, body: "x"})
	_, err := Unpack(context.Background(), bytes.NewReader(blob), digestOf([]byte("other")), s.root)
	if !errors.Is(err, ErrDigestMismatch) {
		t.Fatalf("err = %v, want ErrDigestMismatch", err)
	}
	if entries, _ := os.ReadDir(s.root); len(entries) != 0 {
		t.Fatalf("placed before verifying: %v", entries)
	}
	path := filepath.Join(s.parent, "blob")
	os.WriteFile(path, blob, 0o644)
	if _, err := UnpackFile(context.Background(), path, digestOf([]byte("other")), s.root); !errors.Is(err, ErrDigestMismatch) {
		t.Fatalf("UnpackFile err = %v", err)
	}
	if _, err := Unpack(context.Background(), bytes.NewReader(blob), "md5:abc", s.root); err == nil {
		t.Fatal("bad digest syntax accepted")
	}
	if recs, err := UnpackFile(context.Background(), path, digestOf(blob), s.root); err != nil || len(recs) != 2 {
		t.Fatalf("UnpackFile good: %v %v", recs, err)
	}
}

func TestUnpackRefusesEscapes(t *testing.T) {
	tests := []struct {
		name  string
		setup func(s sandbox) // state of the root before the layer
		ents  []ent
		want  string
	}{
		{name: "absolute path", ents: []ent{{name: "/etc/passwd", typ: tar.TypeReg, body: "x"}}, want: "absolute path refused"},
		{name: "dot-dot", ents: []ent{{name: "../outside/evil", typ: tar.TypeReg, body: "x"}}, want: `".." in path refused`},
		{name: "inner dot-dot", ents: []ent{{name: "a/../../outside/evil", typ: tar.TypeReg, body: "x"}}, want: `".." in path refused`},
		{name: "symlink escaping", ents: []ent{{name: "up", typ: tar.TypeSymlink, link: "../outside"}}, want: "target leaves the root"},
		{name: "deep symlink escaping", ents: []ent{{name: "a/b/up", typ: tar.TypeSymlink, link: "../../../outside/sentinel"}}, want: "target leaves the root"},
		{name: "symlink then write through it", ents: []ent{
			{name: "up", typ: tar.TypeSymlink, link: "../outside"},
			{name: "up/evil", typ: tar.TypeReg, body: "x"}}, want: "target leaves the root"},
		{name: "symlink chain escaping", ents: []ent{
			{name: "a", typ: tar.TypeSymlink, link: "b/c"},
			{name: "b", typ: tar.TypeSymlink, link: "."},
			{name: "d/e", typ: tar.TypeSymlink, link: "../a/../.."}}, want: `".." after a path component`},
		{name: "symlink through a link to the root", ents: []ent{
			{name: "self", typ: tar.TypeSymlink, link: "."},
			{name: "d/up", typ: tar.TypeSymlink, link: "../self/.."}}, want: `".." after a path component`},
		{name: "symlink via existing outside link", setup: func(s sandbox) {
			os.Symlink(s.outside, filepath.Join(s.root, "out"))
		}, ents: []ent{{name: "x", typ: tar.TypeSymlink, link: "out/sentinel"}}, want: "absolute link out of the root"},
		{name: "write through existing outside dir link", setup: func(s sandbox) {
			os.Symlink(s.outside, filepath.Join(s.root, "out"))
		}, ents: []ent{{name: "out/evil", typ: tar.TypeReg, body: "x"}}, want: "out is a symlink that leaves the root"},
		{name: "write through existing relative outside link", setup: func(s sandbox) {
			os.Symlink("../outside", filepath.Join(s.root, "out"))
		}, ents: []ent{{name: "out/evil", typ: tar.TypeReg, body: "x"}}, want: "leaves the root"},
		{name: "hardlink escaping", ents: []ent{{name: "h", typ: tar.TypeLink, link: "../outside/sentinel"}}, want: `".." in path refused`},
		{name: "hardlink absolute", ents: []ent{{name: "h", typ: tar.TypeLink, link: "/etc/passwd"}}, want: "absolute path refused"},
		{name: "hardlink to a file not in the layer", setup: func(s sandbox) {
			os.WriteFile(filepath.Join(s.root, "shadow"), []byte("x"), 0o600)
		}, ents: []ent{{name: "h", typ: tar.TypeLink, link: "shadow"}}, want: "only links to regular files placed earlier"},
		{name: "hardlink via symlink", ents: []ent{
			{name: "up", typ: tar.TypeSymlink, link: "."},
			{name: "h", typ: tar.TypeLink, link: "up/x"}}, want: "only links to regular files placed earlier"},
		{name: "char device", ents: []ent{{name: "dev/null", typ: tar.TypeChar}}, want: "device nodes are refused"},
		{name: "block device", ents: []ent{{name: "dev/sda", typ: tar.TypeBlock}}, want: "device nodes are refused"},
		{name: "fifo", ents: []ent{{name: "run/fifo", typ: tar.TypeFifo}}, want: "fifos are refused"},
		{name: "whiteout", ents: []ent{{name: "etc/.wh.passwd", typ: tar.TypeReg}}, want: "whiteout"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newSandbox(t)
			if tt.setup != nil {
				tt.setup(s)
			}
			blob := mkTar(t, tt.ents...)
			_, err := Unpack(context.Background(), bytes.NewReader(blob), digestOf(blob), s.root)
			var ee *EntryError
			if err == nil || !strings.Contains(err.Error(), tt.want) || !errors.As(err, &ee) {
				t.Fatalf("err = %v, want an EntryError containing %q", err, tt.want)
			}
			s.checkContained(t)
		})
	}
}

func TestReplaceExistingOutsideLink(t *testing.T) {
	// A regular file entry over an existing symlink replaces the link, never writes through it.
	s := newSandbox(t)
	os.Symlink(filepath.Join(s.outside, "sentinel"), filepath.Join(s.root, "f"))
	blob := mkTar(t, ent{name: "f", typ: tar.TypeReg, body: "new"})
	if _, err := Unpack(context.Background(), bytes.NewReader(blob), digestOf(blob), s.root); err != nil {
		t.Fatal(err)
	}
	s.checkContained(t)
	if fi, err := os.Lstat(filepath.Join(s.root, "f")); err != nil || !fi.Mode().IsRegular() {
		t.Fatalf("f is not a regular file now: %v %v", fi, err)
	}
}

func TestExistingDirKeepsOwnerAndMode(t *testing.T) {
	s := newSandbox(t)
	etc := filepath.Join(s.root, "etc")
	os.Mkdir(etc, 0o750)
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	tw.WriteHeader(&tar.Header{Name: "etc/", Typeflag: tar.TypeDir, Mode: 0o777, Uid: 4242, Gid: 4242})
	tw.WriteHeader(&tar.Header{Name: "etc/new/", Typeflag: tar.TypeDir, Mode: 0o700, Uid: 4242, Gid: 4242})
	tw.Close()
	blob := b.Bytes()
	if _, err := Unpack(context.Background(), bytes.NewReader(blob), digestOf(blob), s.root, WithOwners(true)); err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(etc)
	if fi.Mode().Perm() != 0o750 || fi.Sys().(*syscall.Stat_t).Uid == 4242 {
		t.Errorf("existing etc changed: %v uid %d", fi.Mode(), fi.Sys().(*syscall.Stat_t).Uid)
	}
	if os.Geteuid() == 0 {
		fi, _ := os.Stat(filepath.Join(etc, "new"))
		if fi.Mode().Perm() != 0o700 || fi.Sys().(*syscall.Stat_t).Uid != 4242 {
			t.Errorf("created etc/new: %v uid %d, want 0700 owned by 4242", fi.Mode(), fi.Sys().(*syscall.Stat_t).Uid)
		}
	}
}

func TestRemove(t *testing.T) {
	s := newSandbox(t)
	os.MkdirAll(filepath.Join(s.root, "etc"), 0o755) // pre-existing: never removed
	blob := mkTar(t,
		ent{name: "etc/app/a.conf", typ: tar.TypeReg, body: "a"},
		ent{name: "etc/app/b.conf", typ: tar.TypeReg, body: "b"},
		ent{name: "etc/app/link", typ: tar.TypeSymlink, link: "a.conf"},
		ent{name: "opt/x/y/z", typ: tar.TypeReg, body: "z"},
	)
	recs, err := Unpack(context.Background(), bytes.NewReader(blob), digestOf(blob), s.root)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(s.root, "etc/app/b.conf"), []byte("changed"), 0o644)
	kept, err := Remove(s.root, recs)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(kept, []string{"etc/app/b.conf"}) {
		t.Errorf("kept %v, want the changed file only", kept)
	}
	var left []string
	filepath.WalkDir(s.root, func(p string, d fs.DirEntry, err error) error {
		left = append(left, strings.TrimPrefix(p, s.root))
		return nil
	})
	if want := []string{"", "/etc", "/etc/app", "/etc/app/b.conf"}; !slices.Equal(left, want) {
		t.Errorf("left %q, want %q", left, want)
	}
	if _, err := Remove(s.root, recs); err != nil {
		t.Errorf("second Remove: %v", err)
	}
}

func TestPlaceFile(t *testing.T) {
	s := newSandbox(t)
	recs, err := PlaceFile(s.root, "/etc/etcd/etcd.conf", 0o600, []byte("name: m1\n"))
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 3 || recs[0].Path != "etc" || !recs[0].Created || recs[2].Path != "etc/etcd/etcd.conf" || recs[2].Mode != 0o600 {
		t.Fatalf("records %+v", recs)
	}
	if _, err := PlaceFile(s.root, "/etc/etcd/etcd.conf", 0o644, []byte("name: m2\n")); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(s.root, "etc/etcd/etcd.conf")); string(b) != "name: m2\n" {
		t.Errorf("content %q", b)
	}
	os.Symlink(s.outside, filepath.Join(s.root, "out"))
	for _, bad := range []string{"/../outside/x", "/out/x", "/"} {
		if _, err := PlaceFile(s.root, bad, 0o644, []byte("x")); err == nil {
			t.Errorf("PlaceFile(%q): no error", bad)
		}
	}
	s.checkContained(t)
	if kept, err := Remove(s.root, recs); err != nil || len(kept) != 1 {
		t.Errorf("Remove after overwrite: kept %v err %v (the file changed, so it stays)", kept, err)
	}
}

func FuzzUnpack(f *testing.F) {
	seeds := [][]ent{
		{{name: "a/b", typ: tar.TypeReg, body: "x"}, {name: "a/l", typ: tar.TypeSymlink, link: "b"}, {name: "a/h", typ: tar.TypeLink, link: "a/b"}},
		{{name: "up", typ: tar.TypeSymlink, link: ".."}, {name: "up/x", typ: tar.TypeReg, body: "x"}},
		{{name: "s", typ: tar.TypeSymlink, link: "."}, {name: "d/t", typ: tar.TypeSymlink, link: "../s/x"}, {name: "d/t/y", typ: tar.TypeReg}},
		{{name: "abs", typ: tar.TypeSymlink, link: "/"}, {name: "abs/etc/x", typ: tar.TypeReg, body: "x"}},
	}
	for _, s := range seeds {
		b := mkTar(f, s...)
		f.Add(b)
		f.Add(gz(f, b))
	}
	base := fuzzBase(f)
	var n atomic.Int64
	f.Fuzz(func(t *testing.T, data []byte) {
		s := fuzzSandbox(t, base, n.Add(1))
		_, _ = Unpack(context.Background(), bytes.NewReader(data), digestOf(data), s.root, WithMaxBytes(1<<20), WithTempDir(s.parent), withoutSync())
		// The spool file lives in s.parent too and is gone by now.
		s.checkContained(t)
	})
}

// FuzzUnpackEntries builds a tar from a small text script so that the fuzzer spends its
// time on names and link targets (where escapes hide) rather than on tar framing. Each
// line is "<type> <name> [<link>]" with type f (file), d (dir), l (symlink), h (hardlink).
func FuzzUnpackEntries(f *testing.F) {
	for _, seed := range []string{
		"l up ..\nf up/x",
		"l s .\nl d/t ../s/..\nf d/t/y",
		"l a b/c\nl b .\nl d/e ../a/../..\nf d/e/z",
		"d a\nl a/b ../..\nh c a/b",
		"f a/b\nh a/c a/b\nl a/d /a/b\nf a/d",
		"l lib usr/lib\nd usr/lib/x\nl lib/x/y ../../../z\nl lib .\nf lib/x/y/w",
	} {
		f.Add(seed)
	}
	base := fuzzBase(f)
	var n atomic.Int64
	f.Fuzz(func(t *testing.T, script string) {
		var ents []ent
		for _, line := range strings.Split(script, "\n") {
			fields := strings.Fields(line)
			if len(fields) < 2 || len(ents) > 32 {
				continue
			}
			e := ent{name: fields[1]}
			if len(fields) > 2 {
				e.link = fields[2]
			}
			switch fields[0] {
			case "f":
				e.typ, e.body = tar.TypeReg, "x"
			case "d":
				e.typ = tar.TypeDir
			case "l":
				e.typ = tar.TypeSymlink
			case "h":
				e.typ = tar.TypeLink
			default:
				continue
			}
			ents = append(ents, e)
		}
		var b bytes.Buffer
		tw := tar.NewWriter(&b)
		for _, e := range ents {
			h := &tar.Header{Name: e.name, Typeflag: e.typ, Linkname: e.link, Mode: 0o755, Size: int64(len(e.body))}
			if tw.WriteHeader(h) != nil {
				return // a name archive/tar cannot encode
			}
			tw.Write([]byte(e.body))
		}
		tw.Close()
		s := fuzzSandbox(t, base, n.Add(1))
		data := b.Bytes()
		_, _ = Unpack(context.Background(), bytes.NewReader(data), digestOf(data), s.root, WithTempDir(s.parent), withoutSync())
		s.checkContained(t)
	})
}

// fuzzBase is one directory for all the inputs of a fuzz run, on tmpfs when there is one:
// with t.TempDir per input on this disk, file system time (7 ms against 0.3 ms) starved
// the fuzzer, and minimizing each new input takes thousands of runs.
func fuzzBase(f *testing.F) string {
	parent := ""
	if fi, err := os.Stat("/dev/shm"); err == nil && fi.IsDir() {
		parent = "/dev/shm"
	}
	base, err := os.MkdirTemp(parent, "fuzz-unpack-")
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { os.RemoveAll(base) })
	return base
}

// fuzzSandbox is newSandbox under base, removed when the input is done.
func fuzzSandbox(t *testing.T, base string, n int64) sandbox {
	dir := filepath.Join(base, strconv.FormatInt(n, 10))
	t.Cleanup(func() { os.RemoveAll(dir) })
	s := sandbox{parent: dir, root: filepath.Join(dir, "root"), outside: filepath.Join(dir, "outside")}
	if err := errors.Join(os.MkdirAll(s.outside, 0o755), os.Mkdir(s.root, 0o755)); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(s.outside, "sentinel"), []byte("keep"), 0o644); err != nil {
		t.Fatal(err)
	}
	return s
}
