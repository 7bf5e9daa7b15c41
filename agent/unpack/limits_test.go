package unpack

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/gzip"
)

// zeroBomb is a gzip'd tar holding one file of n zero bytes, made without
// holding n bytes in memory: the whole bomb is about n/1000 bytes.
func zeroBomb(t testing.TB, n int64) []byte {
	t.Helper()
	var out bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&out, gzip.BestCompression)
	tw := tar.NewWriter(zw)
	if err := tw.WriteHeader(&tar.Header{Name: "zeros", Typeflag: tar.TypeReg, Mode: 0o644, Size: n}); err != nil {
		t.Fatal(err)
	}
	if _, err := io.CopyN(tw, zeroReader{}, n); err != nil {
		t.Fatal(err)
	}
	tw.Close()
	zw.Close()
	return out.Bytes()
}

type zeroReader struct{}

func (zeroReader) Read(b []byte) (int, error) { clear(b); return len(b), nil }

// headerBomb is a gzip'd tar whose one entry says it holds n bytes, followed
// by a little of them: what a bomb of any size looks like at its start.
func headerBomb(t testing.TB, n int64) []byte {
	t.Helper()
	var raw bytes.Buffer
	tw := tar.NewWriter(&raw)
	if err := tw.WriteHeader(&tar.Header{Name: "big", Typeflag: tar.TypeReg, Mode: 0o644, Size: n}); err != nil {
		t.Fatal(err)
	}
	tw.Write(make([]byte, 1<<20))
	tw.Flush()
	return gz(t, raw.Bytes())
}

// checkNothingPlaced fails if the root holds anything.
func checkNothingPlaced(t *testing.T, root string) {
	t.Helper()
	entries, err := os.ReadDir(root)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Fatal(err)
	}
	if len(entries) > 0 {
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		t.Fatalf("a refused layer placed %v", names)
	}
}

func TestLayerLimits(t *testing.T) {
	many := func(n int) []byte {
		var ents []ent
		for i := range n {
			ents = append(ents, ent{name: fmt.Sprintf("d/f%d", i), typ: tar.TypeReg, body: "x"})
		}
		return mkTar(t, ents...)
	}
	plenty := func(string) (int64, error) { return 1 << 40, nil }
	for _, tc := range []struct {
		name string
		blob []byte
		opts []Option
		err  string // "" : placed
	}{
		{"gzip bomb over the cap", zeroBomb(t, 64<<20), []Option{WithMaxBytes(16 << 20)}, "more than 16777216"},
		{"gzip bomb within the cap", zeroBomb(t, 4<<20), []Option{WithMaxBytes(16 << 20)}, ""},
		{"a 3 GiB entry under the default cap", headerBomb(t, 3<<30), nil, "more than 2147483648"},
		{"too many entries", many(101), []Option{WithMaxEntries(100)}, "more than 100 entries"},
		{"as many entries as allowed", many(99), []Option{WithMaxEntries(100)}, ""},
		{"a path component over NAME_MAX", mkTar(t, ent{name: "a/" + strings.Repeat("n", 256), typ: tar.TypeReg}), nil, "path component of 256 bytes"},
		{"a path over PATH_MAX", mkTar(t, ent{name: strings.Repeat("d/", 2100) + "f", typ: tar.TypeReg}), nil, "more than 4096"},
		{"more than the disk holds", zeroBomb(t, 8<<20), []Option{withFreeSpace(func(string) (int64, error) { return 70 << 20, nil })}, "bytes free"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newSandbox(t)
			opts := append([]Option{withFreeSpace(plenty), WithTempDir(s.parent)}, tc.opts...)
			start := time.Now()
			recs, err := Unpack(context.Background(), bytes.NewReader(tc.blob), digestOf(tc.blob), s.root, opts...)
			if tc.err == "" {
				if err != nil || len(recs) == 0 {
					t.Fatalf("refused a layer within its limits: %v", err)
				}
				return
			}
			if !errors.Is(err, ErrLimit) || !strings.Contains(err.Error(), tc.err) || !strings.Contains(err.Error(), "nothing placed") {
				t.Fatalf("err = %v, want ErrLimit saying %q and that nothing was placed", err, tc.err)
			}
			t.Logf("%d-byte layer refused in %v: %v", len(tc.blob), time.Since(start).Round(time.Millisecond), err)
			checkNothingPlaced(t, s.root)
			s.checkContained(t)
		})
	}
}

// TestSetuidPolicy: setuid and setgid bits are dropped unless the image
// declares them (WithSetuid(true), from its plan); the sticky bit stays.
func TestSetuidPolicy(t *testing.T) {
	blob := mkTar(t,
		ent{name: "bin/su", typ: tar.TypeReg, body: "#!/bin/true\n", mode: 0o4755},
		ent{name: "bin/wall", typ: tar.TypeReg, body: "#!/bin/true\n", mode: 0o2755},
		ent{name: "shared", typ: tar.TypeDir, mode: 0o3775},
		ent{name: "tmp", typ: tar.TypeDir, mode: 0o1777},
	)
	setid := fs.ModeSetuid | fs.ModeSetgid
	for _, keep := range []bool{false, true} {
		t.Run(fmt.Sprintf("keep=%v", keep), func(t *testing.T) {
			s := newSandbox(t)
			recs, err := Unpack(context.Background(), bytes.NewReader(blob), digestOf(blob), s.root, WithSetuid(keep), WithTempDir(s.parent))
			if err != nil {
				t.Fatal(err)
			}
			recorded := map[string]fs.FileMode{}
			for _, r := range recs {
				recorded[r.Path] = r.Mode
			}
			for _, tc := range []struct {
				path string
				bits fs.FileMode
			}{{"bin/su", fs.ModeSetuid}, {"bin/wall", fs.ModeSetgid}, {"shared", fs.ModeSetgid}} {
				fi, err := os.Stat(filepath.Join(s.root, tc.path))
				if err != nil {
					t.Fatal(err)
				}
				got := fi.Mode() & setid
				want := fs.FileMode(0)
				if keep {
					want = tc.bits
				}
				if got != want || recorded[tc.path]&setid != want {
					t.Errorf("%s: set-id bits on disk %v, recorded %v; want %v", tc.path, got, recorded[tc.path]&setid, want)
				}
			}
			if fi, _ := os.Stat(filepath.Join(s.root, "tmp")); fi == nil || fi.Mode()&fs.ModeSticky == 0 {
				t.Error("the sticky bit of tmp was dropped")
			}
		})
	}
}
