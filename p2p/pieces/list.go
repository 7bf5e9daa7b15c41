// Package pieces splits blobs into hash-checked pieces, keeps partial blobs on
// disk so a restarted process resumes, and serves held pieces to peers over mTLS.
//
// It is shared by the controller (which computes and signs a PieceList once
// per blob and seeds it) and the agent (which fetches, stores and re-serves
// pieces); it knows nothing of NATS.
package pieces

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

const (
	// MinPieceSize is small because agents forward pieces in a pipeline and
	// each hop delays the blob by a few pieces: measured on 20 hosts at
	// 100 Mbit/s with a 128 MiB layer, 1 MiB pieces took 1.49 x S/B, 512 KiB
	// 1.25 to 1.33, 256 KiB 1.14 (bench/README.md). Below this the fixed cost
	// per piece (an HTTP request, a hash call, a bitfield update, about
	// 0.1 ms) starts to count against its 21 ms on the wire.
	MinPieceSize = 256 << 10
	// MaxPieceSize bounds the memory a fetcher holds per piece in flight and
	// the delay per hop (Dragonfly's upper bound).
	MaxPieceSize = 64 << 20
	// TargetPieces is how many pieces a blob gets before the piece size
	// grows: the hash list (about 67 bytes a piece in JSON) stays under
	// 70 KiB, so it fits a signed task in one NATS message with room to spare.
	TargetPieces = 1024
)

// PieceList describes a blob as fixed-size pieces with known hashes, so each
// piece is checked as it arrives, before the whole blob is.
type PieceList struct {
	Digest    v1.Hash  `json:"digest"`    // sha256 of the whole blob
	Size      int64    `json:"size"`      // bytes
	PieceSize int64    `json:"pieceSize"` // bytes; the last piece may be shorter
	Hashes    []string `json:"hashes"`    // hex sha256 of each piece, in order

	// vouched: the caller got this list from a source that built it from the
	// blob itself and signed it (a controller's task). Never serialized, so a
	// list that arrives from a peer or a file is never vouched for.
	vouched bool
}

// Vouch marks the list as built from the blob by a party the caller trusts and
// received intact (the piece list inside a signed task). Then every piece that
// matches the list proves the whole blob, and the store skips the second,
// whole-blob sha256 over every byte: one hash per delivered byte instead of two.
func (l *PieceList) Vouch() { l.vouched = true }

// Vouched reports whether Vouch was called on this list (or the one it was copied from).
func (l PieceList) Vouched() bool { return l.vouched }

// ChoosePieceSize returns the piece size for a blob of size bytes: the
// smallest power of two from MinPieceSize up to MaxPieceSize that keeps the
// count at or below TargetPieces. So blobs up to 256 MiB get 256 KiB
// pieces, 1 GiB gets 1 MiB (Kraken's 4 MiB from 4 GiB), 64 GiB and more
// get 64 MiB.
func ChoosePieceSize(size int64) int64 {
	ps := int64(MinPieceSize)
	for ps < MaxPieceSize && (size+ps-1)/ps > TargetPieces {
		ps *= 2
	}
	return ps
}

// Compute reads a blob of size bytes from r and returns its piece list,
// with the piece size ChoosePieceSize gives.
func Compute(r io.Reader, size int64) (PieceList, error) {
	return ComputeWithPieceSize(r, size, ChoosePieceSize(size))
}

// ComputeWithPieceSize is Compute with a given piece size (benchmarks).
func ComputeWithPieceSize(r io.Reader, size, ps int64) (PieceList, error) {
	if ps <= 0 || ps > MaxPieceSize {
		return PieceList{}, fmt.Errorf("piece size %d: want 1..%d", ps, MaxPieceSize)
	}
	l := PieceList{Size: size, PieceSize: ps}
	whole := sha256.New()
	buf := make([]byte, ps)
	var read int64
	for read < size {
		n := min(ps, size-read)
		if _, err := io.ReadFull(r, buf[:n]); err != nil {
			return PieceList{}, fmt.Errorf("read piece %d at offset %d: %w", len(l.Hashes), read, err)
		}
		sum := sha256.Sum256(buf[:n])
		l.Hashes = append(l.Hashes, hex.EncodeToString(sum[:]))
		whole.Write(buf[:n])
		read += n
	}
	l.Digest = v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(whole.Sum(nil))}
	return l, nil
}

// ComputeFile returns the piece list of the file at path; pieceSize 0
// means ChoosePieceSize.
func ComputeFile(path string, pieceSize int64) (PieceList, error) {
	f, err := os.Open(path)
	if err != nil {
		return PieceList{}, fmt.Errorf("piece list: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return PieceList{}, fmt.Errorf("piece list: %w", err)
	}
	if pieceSize == 0 {
		pieceSize = ChoosePieceSize(st.Size())
	}
	l, err := ComputeWithPieceSize(f, st.Size(), pieceSize)
	if err != nil {
		return PieceList{}, fmt.Errorf("piece list of %s: %w", path, err)
	}
	return l, nil
}

// Count is the number of pieces.
func (l PieceList) Count() int { return len(l.Hashes) }

// Offset is where piece i starts in the blob.
func (l PieceList) Offset(i int) int64 { return int64(i) * l.PieceSize }

// Len is the length of piece i.
func (l PieceList) Len(i int) int64 {
	return min(l.PieceSize, l.Size-l.Offset(i))
}

// Validate checks that the list is self-consistent; a list from the wire must
// pass it before anything is fetched or stored with it.
func (l PieceList) Validate() error {
	if l.Digest.Algorithm != "sha256" || len(l.Digest.Hex) != 64 {
		return fmt.Errorf("piece list: digest %q: want sha256:<64 hex>", l.Digest)
	}
	if l.Size < 0 {
		return fmt.Errorf("piece list %s: size %d is negative", l.Digest, l.Size)
	}
	if l.PieceSize <= 0 || l.PieceSize > MaxPieceSize {
		return fmt.Errorf("piece list %s: pieceSize %d: want 1..%d", l.Digest, l.PieceSize, MaxPieceSize)
	}
	want := int((l.Size + l.PieceSize - 1) / l.PieceSize)
	if len(l.Hashes) != want {
		return fmt.Errorf("piece list %s: %d hashes for %d bytes in %d-byte pieces: want %d", l.Digest, len(l.Hashes), l.Size, l.PieceSize, want)
	}
	for i, h := range l.Hashes {
		if b, err := hex.DecodeString(h); err != nil || len(b) != sha256.Size {
			return fmt.Errorf("piece list %s: hashes[%d] %q: want 64 hex digits", l.Digest, i, h)
		}
	}
	return nil
}

// ErrPieceMismatch says a piece's bytes do not match its hash in the list.
var ErrPieceMismatch = errors.New("piece hash mismatch")

// Verify checks data against piece i's hash.
func (l PieceList) Verify(i int, data []byte) error {
	if i < 0 || i >= l.Count() {
		return fmt.Errorf("piece %d of %s: out of range 0..%d", i, l.Digest, l.Count()-1)
	}
	if int64(len(data)) != l.Len(i) {
		return fmt.Errorf("piece %d of %s: %d bytes, want %d: %w", i, l.Digest, len(data), l.Len(i), ErrPieceMismatch)
	}
	sum := sha256.Sum256(data)
	want, _ := hex.DecodeString(l.Hashes[i])
	if !bytes.Equal(sum[:], want) {
		return fmt.Errorf("piece %d of %s: sha256 %x, want %s: %w", i, l.Digest, sum, l.Hashes[i], ErrPieceMismatch)
	}
	return nil
}
