package pieces

import (
	"bytes"
	"crypto/rand"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func TestChoosePieceSize(t *testing.T) {
	for _, tc := range []struct {
		size, want int64
	}{
		{0, 256 << 10},
		{10, 256 << 10},
		{128 << 20, 256 << 10},
		{256 << 20, 256 << 10},
		{256<<20 + 1, 512 << 10},
		{1 << 30, 1 << 20},
		{1<<30 + 1, 2 << 20},
		{4 << 30, 4 << 20},
		{64 << 30, 64 << 20},
		{1 << 40, 64 << 20},
	} {
		if got := ChoosePieceSize(tc.size); got != tc.want {
			t.Errorf("ChoosePieceSize(%d) = %d, want %d", tc.size, got, tc.want)
		}
	}
}

func randomBlob(t testing.TB, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func TestComputeAndVerify(t *testing.T) {
	blob := randomBlob(t, 2<<20+5)
	l, err := ComputeWithPieceSize(bytes.NewReader(blob), int64(len(blob)), 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if l.Count() != 3 || l.Len(2) != 5 || l.Validate() != nil {
		t.Fatalf("list = %d pieces, last %d bytes, validate %v", l.Count(), l.Len(2), l.Validate())
	}
	if err := l.Verify(2, blob[2<<20:]); err != nil {
		t.Fatalf("verify good piece: %v", err)
	}
	bad := bytes.Clone(blob[:1<<20])
	bad[7] ^= 1
	if err := l.Verify(0, bad); !errors.Is(err, ErrPieceMismatch) {
		t.Fatalf("verify corrupted piece: %v, want ErrPieceMismatch", err)
	}
	if err := l.Verify(3, nil); err == nil {
		t.Fatal("verify out-of-range piece: no error")
	}
	if _, err := Compute(bytes.NewReader(blob[:10]), int64(len(blob))); err == nil {
		t.Fatal("compute over a short reader: no error")
	}
	if d, err := Compute(bytes.NewReader(blob), int64(len(blob))); err != nil || d.Digest != l.Digest || d.PieceSize != MinPieceSize {
		t.Fatalf("Compute with the chosen piece size: %v, digest %s piece size %d", err, d.Digest, d.PieceSize)
	}
}

func TestValidate(t *testing.T) {
	good, err := Compute(bytes.NewReader(make([]byte, 3<<20)), 3<<20)
	if err != nil {
		t.Fatal(err)
	}
	for name, mutate := range map[string]func(*PieceList){
		"bad algorithm": func(l *PieceList) { l.Digest.Algorithm = "md5" },
		"negative size": func(l *PieceList) { l.Size = -1 },
		"zero piece":    func(l *PieceList) { l.PieceSize = 0 },
		"huge piece":    func(l *PieceList) { l.PieceSize = MaxPieceSize * 2 },
		"missing hash":  func(l *PieceList) { l.Hashes = l.Hashes[:2] },
		"extra hash":    func(l *PieceList) { l.Hashes = append(l.Hashes, l.Hashes[0]) },
		"bad hex":       func(l *PieceList) { l.Hashes[1] = "zz" },
	} {
		t.Run(name, func(t *testing.T) {
			l := good
			l.Hashes = append([]string(nil), good.Hashes...)
			mutate(&l)
			if err := l.Validate(); err == nil {
				t.Fatal("Validate accepted a broken list")
			}
		})
	}
	if err := good.Validate(); err != nil {
		t.Fatalf("Validate(good) = %v", err)
	}
}

func TestBitfield(t *testing.T) {
	b := NewBitfield(10)
	if len(b) != 2 {
		t.Fatalf("len = %d, want 2", len(b))
	}
	b.Set(0)
	b.Set(9)
	b.Set(16) // beyond the bytes: ignored
	if !b.Has(0) || !b.Has(9) || b.Has(1) || b.Has(16) || b.Has(-1) || b.Count() != 2 {
		t.Fatalf("bitfield %08b: wrong bits", b)
	}
	b.Clear(0)
	if b.Has(0) || b.Count() != 1 || b[0] != 0 || b[1] != 0x40 {
		t.Fatalf("after Clear(0): %08b", b)
	}
	if FullBitfield(10).Count() != 10 {
		t.Fatal("FullBitfield(10) does not have 10 pieces")
	}
}

func newTestBlob(t *testing.T, n int) ([]byte, PieceList) {
	t.Helper()
	blob := randomBlob(t, n)
	l, err := ComputeWithPieceSize(bytes.NewReader(blob), int64(n), 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	return blob, l
}

func piece(blob []byte, l PieceList, i int) []byte {
	return blob[l.Offset(i) : l.Offset(i)+l.Len(i)]
}

func TestStoreWriteFinish(t *testing.T) {
	blob, l := newTestBlob(t, 4<<20+100)
	// The whole-blob hash reaches pieces that landed out of order from
	// copies kept in memory, or, past the bound, by reading them back.
	for _, tc := range []struct {
		name       string
		earlyLimit int64
	}{
		{"copies kept", maxEarlyBytes},
		{"one piece kept, the rest read back", l.PieceSize},
		{"all read back", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := OpenStore(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			p, err := s.Open(l)
			if err != nil {
				t.Fatal(err)
			}
			p.earlyLimit = tc.earlyLimit
			bad := bytes.Clone(piece(blob, l, 1))
			bad[0] ^= 0xff
			if err := p.WritePiece(1, bad); !errors.Is(err, ErrPieceMismatch) {
				t.Fatalf("WritePiece(corrupt) = %v, want ErrPieceMismatch", err)
			}
			if p.Has(1) {
				t.Fatal("a corrupt piece is recorded as held")
			}
			if _, err := p.Finish(); err == nil {
				t.Fatal("Finish with no pieces: no error")
			}
			// Out of order, so the whole-blob hash must catch up over held
			// pieces. The caller's buffer is reused at once (as the fetcher's
			// pool does): what the store kept must be its own copy.
			buf := make([]byte, l.PieceSize)
			for _, i := range []int{4, 2, 0, 3, 1} {
				data := buf[:copy(buf, piece(blob, l, i))]
				if err := p.WritePiece(i, data); err != nil {
					t.Fatalf("WritePiece(%d): %v", i, err)
				}
				for k := range buf {
					buf[k] = 0xa5
				}
			}
			if p.earlyBytes > tc.earlyLimit {
				t.Fatalf("%d bytes of early pieces kept, bound %d", p.earlyBytes, tc.earlyLimit)
			}
			got, err := p.ReadPiece(3)
			if err != nil || !bytes.Equal(got, piece(blob, l, 3)) {
				t.Fatalf("ReadPiece(3) = %d bytes, %v", len(got), err)
			}
			path, err := p.Finish()
			if err != nil {
				t.Fatal(err)
			}
			if b, _ := os.ReadFile(path); !bytes.Equal(b, blob) || !s.Has(l.Digest) || !p.Complete() {
				t.Fatal("finished blob differs from the original")
			}
			if _, err := os.Stat(path + ".partial"); !os.IsNotExist(err) {
				t.Fatalf(".partial still there after Finish: %v", err)
			}
			if len(p.early) != 0 || p.earlyBytes != 0 {
				t.Fatalf("%d early pieces (%d bytes) still kept after Finish", len(p.early), p.earlyBytes)
			}
		})
	}
}

func TestStoreResumeDropsDamagedPieces(t *testing.T) {
	blob, l := newTestBlob(t, 3<<20)
	dir := t.TempDir()
	s, _ := OpenStore(dir)
	p, err := s.Open(l)
	if err != nil {
		t.Fatal(err)
	}
	for _, i := range []int{0, 2} {
		if err := p.WritePiece(i, piece(blob, l, i)); err != nil {
			t.Fatal(err)
		}
	}
	s.Close()
	// Damage piece 2 on disk behind the store's back: resume must not trust it.
	f, err := os.OpenFile(filepath.Join(dir, l.Digest.String()+".partial"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte("junk"), l.Offset(2)+10)
	f.Close()

	s2, _ := OpenStore(dir)
	defer s2.Close()
	p2, err := s2.Open(l)
	if err != nil {
		t.Fatal(err)
	}
	if !p2.Has(0) || p2.Has(1) || p2.Has(2) {
		t.Fatalf("resumed bitfield %08b, want only piece 0", p2.Have())
	}
	for _, i := range []int{1, 2} {
		if err := p2.WritePiece(i, piece(blob, l, i)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := p2.Finish(); err != nil {
		t.Fatal(err)
	}
}

func TestFinishRejectsLyingList(t *testing.T) {
	blob, l := newTestBlob(t, 2<<20)
	l.Digest.Hex = l.Hashes[0] // a valid-looking digest that is not the blob's
	s, _ := OpenStore(t.TempDir())
	defer s.Close()
	p, err := s.Open(l)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < l.Count(); i++ {
		if err := p.WritePiece(i, piece(blob, l, i)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := p.Finish(); !errors.Is(err, ErrPieceMismatch) {
		t.Fatalf("Finish = %v, want ErrPieceMismatch", err)
	}
	if s.Has(l.Digest) || p.Have().Count() != 0 {
		t.Fatal("a blob failing its digest is in the store or still counted as held")
	}
}

func TestStoreAdd(t *testing.T) {
	blob := randomBlob(t, 1500)
	src := filepath.Join(t.TempDir(), "layer")
	os.WriteFile(src, blob, 0o644)
	s, _ := OpenStore(t.TempDir())
	defer s.Close()
	l, err := s.Add(t.Context(), src, 0)
	if err != nil {
		t.Fatal(err)
	}
	p := s.lookup(l.Digest)
	if p == nil || !p.Complete() {
		t.Fatal("added blob is not complete in the store")
	}
	got, err := p.ReadPiece(0)
	if err != nil || !bytes.Equal(got, blob) {
		t.Fatalf("ReadPiece(0) = %v", err)
	}
}
