package atomicfile

import (
	"os"
	"path/filepath"
	"testing"
)

func TestWrite(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "f")
	for _, tt := range []struct {
		data string
		mode os.FileMode
	}{{"one", 0o600}, {"two, longer", 0o644}} {
		if err := Write(p, []byte(tt.data), tt.mode); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(p)
		if err != nil || string(b) != tt.data {
			t.Fatalf("read back %q, %v; want %q", b, err, tt.data)
		}
		if fi, _ := os.Stat(p); fi.Mode().Perm() != tt.mode {
			t.Errorf("mode %v, want %v", fi.Mode().Perm(), tt.mode)
		}
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Errorf("%d entries in the directory, want only the file (no temporary left)", len(ents))
	}
}

func TestWriteFailsWithoutTouchingTheTarget(t *testing.T) {
	if err := Write(filepath.Join(t.TempDir(), "missing-dir", "f"), []byte("x"), 0o644); err == nil {
		t.Fatal("write into a missing directory: no error")
	}
	dir := t.TempDir()
	p := filepath.Join(dir, "f")
	if err := os.WriteFile(p, []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := WriteJSON(p, func() {}, 0o644); err == nil {
		t.Fatal("WriteJSON of a func: no error")
	}
	if b, _ := os.ReadFile(p); string(b) != "old" {
		t.Errorf("a failed write changed the file to %q", b)
	}
}

func TestWriteJSON(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f.json")
	if err := WriteJSON(p, map[string]int{"a": 1}, 0o600); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(p); string(b) != "{\n \"a\": 1\n}\n" {
		t.Errorf("got %q", b)
	}
}
