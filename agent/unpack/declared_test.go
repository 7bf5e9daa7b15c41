package unpack

import (
	"archive/tar"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/flotilla-dev/flotilla/protocol"
)

// Declared contents (recorded at build time, carried by the signed step)
// replace the pre-pass: bounds and free space are checked against them before
// anything is placed, and the extraction stops a layer that holds more.
func TestDeclaredContents(t *testing.T) {
	blob := gz(t, mkTar(t, ent{name: "d/", typ: tar.TypeDir}, ent{name: "d/a", typ: tar.TypeReg, body: "hello"},
		ent{name: "d/b", typ: tar.TypeReg, body: "world!"}))
	exact := &protocol.LayerContents{FileBytes: 11, Entries: 3, LongestPath: 3}
	plenty := func(string) (int64, error) { return 1 << 40, nil }
	for _, tc := range []struct {
		name     string
		declared *protocol.LayerContents
		opts     []Option
		err      string // "": placed
		nothing  bool   // refused before anything was placed
	}{
		{"exact", exact, nil, "", false},
		{"over the byte cap", &protocol.LayerContents{FileBytes: 3 << 30, Entries: 3}, nil, "more than 2147483648", true},
		{"over the entry cap", &protocol.LayerContents{FileBytes: 11, Entries: 101}, []Option{WithMaxEntries(100)}, "101 entries", true},
		{"over the free space", exact, []Option{withFreeSpace(func(string) (int64, error) { return 64 << 20, nil })}, "bytes free", true},
		{"a path over PATH_MAX", &protocol.LayerContents{FileBytes: 11, Entries: 3, LongestPath: 5000}, nil, "more than 4096", true},
		{"holds more entries than declared", &protocol.LayerContents{FileBytes: 11, Entries: 2}, nil, "more than its build recorded", false},
		{"holds more bytes than declared", &protocol.LayerContents{FileBytes: 5, Entries: 3}, nil, "more than its build recorded", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newSandbox(t)
			path := filepath.Join(s.parent, "blob")
			if err := os.WriteFile(path, blob, 0o600); err != nil {
				t.Fatal(err)
			}
			opts := append([]Option{withFreeSpace(plenty), WithDeclaredContents(tc.declared)}, tc.opts...)
			recs, err := UnpackFile(context.Background(), path, digestOf(blob), s.root, opts...)
			if tc.err == "" {
				if err != nil || len(recs) != 3 {
					t.Fatalf("got %d records, %v", len(recs), err)
				}
				if b, _ := os.ReadFile(filepath.Join(s.root, "d", "b")); string(b) != "world!" {
					t.Errorf("d/b = %q", b)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.err) || !errors.Is(err, ErrLimit) {
				t.Fatalf("err = %v, want ErrLimit with %q", err, tc.err)
			}
			if tc.nothing {
				checkNothingPlaced(t, s.root)
			}
		})
	}
}

// A blob the caller just verified is not hashed again; a cached one is.
func TestVerifiedBlobSkipsTheHash(t *testing.T) {
	blob := gz(t, mkTar(t, ent{name: "f", typ: tar.TypeReg, body: "x"}))
	wrong := "sha256:" + strings.Repeat("0", 64) // stands for "the caller proved it by other means"
	for _, verified := range []bool{false, true} {
		s := newSandbox(t)
		path := filepath.Join(s.parent, "blob")
		if err := os.WriteFile(path, blob, 0o600); err != nil {
			t.Fatal(err)
		}
		var opts []Option
		if verified {
			opts = append(opts, WithVerifiedBlob())
		}
		_, err := UnpackFile(context.Background(), path, wrong, s.root, opts...)
		if verified && err != nil {
			t.Errorf("verified blob: %v", err)
		}
		if !verified && !errors.Is(err, ErrDigestMismatch) {
			t.Errorf("unverified blob with a wrong digest: %v, want a mismatch", err)
		}
	}
}
