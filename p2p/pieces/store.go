package pieces

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"sync"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/flotilla-dev/flotilla/internal/atomicfile"
)

// Store keeps blobs on disk in one directory:
//
//	<dir>/<digest>          a complete blob, verified against its digest
//	<dir>/<digest>.partial  a blob being fetched, pieces written at their offsets
//	<dir>/<digest>.have     the bitfield of pieces written to .partial
//	<dir>/<digest>.pieces   the piece list (JSON), so a restarted process can
//	                        resume and serve without being told again
//
// It is safe for concurrent use: a fetcher writes pieces while the handler
// serves the ones already held.
type Store struct {
	dir string

	mu       sync.Mutex
	blobs    map[v1.Hash]*Partial
	changedC chan struct{} // closed and replaced whenever a piece lands
}

// OpenStore opens (creating it if needed) the store in dir.
func OpenStore(dir string) (*Store, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("open blob store: %w", err)
	}
	return &Store{dir: dir, blobs: map[v1.Hash]*Partial{}, changedC: make(chan struct{})}, nil
}

// Dir is the store's directory.
func (s *Store) Dir() string { return s.dir }

// Path is where the complete blob d lives (or will live).
func (s *Store) Path(d v1.Hash) string { return filepath.Join(s.dir, d.String()) }

// Has reports whether the complete, verified blob d is in the store.
func (s *Store) Has(d v1.Hash) bool {
	_, err := os.Stat(s.Path(d))
	return err == nil
}

// Close releases open files. Partials handed out before must not be used after.
func (s *Store) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var errs []error
	for d, p := range s.blobs {
		errs = append(errs, p.close())
		delete(s.blobs, d)
	}
	return errors.Join(errs...)
}

// changed returns a channel closed at the next change of any blob.
func (s *Store) changed() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.changedC
}

func (s *Store) notify() {
	s.mu.Lock()
	close(s.changedC)
	s.changedC = make(chan struct{})
	s.mu.Unlock()
}

// Add imports the complete file at path (a seed): it computes the piece
// list (pieceSize 0: ChoosePieceSize), links or copies the file into the
// store, and returns the list.
func (s *Store) Add(ctx context.Context, path string, pieceSize int64) (PieceList, error) {
	list, err := ComputeFile(path, pieceSize)
	if err != nil {
		return PieceList{}, err
	}
	if err := ctx.Err(); err != nil {
		return PieceList{}, err
	}
	if err := atomicfile.WriteJSON(s.file(list.Digest, ".pieces"), list, 0o644); err != nil {
		return PieceList{}, fmt.Errorf("add %s: %w", path, err)
	}
	dst := s.Path(list.Digest)
	if !s.Has(list.Digest) {
		if err := LinkOrCopy(path, dst); err != nil {
			return PieceList{}, fmt.Errorf("add %s to store %s: %w", path, s.dir, err)
		}
	}
	if _, err := s.Open(list); err != nil {
		return PieceList{}, err
	}
	return list, nil
}

// Open returns the blob list.Digest for writing and reading pieces, resuming
// from the pieces already on disk. Pieces recorded as held are re-hashed, so a
// crash between writing a piece and recording it (or a damaged disk) costs a
// re-fetch, never a corrupt blob.
func (s *Store) Open(list PieceList) (*Partial, error) {
	if err := list.Validate(); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if p, ok := s.blobs[list.Digest]; ok {
		if p.list.PieceSize != list.PieceSize || p.list.Size != list.Size {
			return nil, fmt.Errorf("blob %s is open with %d-byte pieces of %d bytes, asked for %d of %d", list.Digest, p.list.PieceSize, p.list.Size, list.PieceSize, list.Size)
		}
		return p, nil
	}
	p, err := s.openLocked(list)
	if err != nil {
		return nil, fmt.Errorf("open blob %s in %s: %w", list.Digest, s.dir, err)
	}
	s.blobs[list.Digest] = p
	return p, nil
}

// lookup returns the blob d if the store holds any of it, loading its piece
// list from disk when this process has not opened it yet.
func (s *Store) lookup(d v1.Hash) *Partial {
	s.mu.Lock()
	p := s.blobs[d]
	s.mu.Unlock()
	if p != nil {
		return p
	}
	var list PieceList
	b, err := os.ReadFile(s.file(d, ".pieces"))
	if err != nil || json.Unmarshal(b, &list) != nil || list.Digest != d {
		return nil
	}
	p, err = s.Open(list)
	if err != nil {
		return nil
	}
	return p
}

func (s *Store) file(d v1.Hash, suffix string) string {
	return filepath.Join(s.dir, d.String()+suffix)
}

func (s *Store) openLocked(list PieceList) (*Partial, error) {
	p := &Partial{store: s, list: list, have: NewBitfield(list.Count()), earlyLimit: maxEarlyBytes}
	if f, err := os.Open(s.Path(list.Digest)); err == nil {
		st, err := f.Stat()
		if err != nil || st.Size() != list.Size {
			f.Close()
			return nil, fmt.Errorf("complete blob %s has %d bytes, piece list says %d", s.Path(list.Digest), st.Size(), list.Size)
		}
		p.f, p.complete, p.have = f, true, FullBitfield(list.Count())
		return p, atomicfile.WriteJSON(s.file(list.Digest, ".pieces"), list, 0o644)
	}
	// A partial left by a run with another piece list is useless: start over.
	var old PieceList
	if b, err := os.ReadFile(s.file(list.Digest, ".pieces")); err == nil {
		if json.Unmarshal(b, &old) != nil || old.PieceSize != list.PieceSize || old.Size != list.Size {
			os.Remove(s.file(list.Digest, ".partial"))
			os.Remove(s.file(list.Digest, ".have"))
		}
	}
	if err := atomicfile.WriteJSON(s.file(list.Digest, ".pieces"), list, 0o644); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(s.file(list.Digest, ".partial"), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, err
	}
	if err := f.Truncate(list.Size); err != nil {
		f.Close()
		return nil, err
	}
	hf, err := os.OpenFile(s.file(list.Digest, ".have"), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		f.Close()
		return nil, err
	}
	p.f, p.haveFile = f, hf
	recorded := NewBitfield(list.Count())
	if _, err := hf.ReadAt(recorded, 0); err != nil && !errors.Is(err, io.EOF) {
		p.close()
		return nil, err
	}
	buf := make([]byte, list.PieceSize)
	for i := 0; i < list.Count(); i++ {
		if !recorded.Has(i) {
			continue
		}
		data := buf[:list.Len(i)]
		if _, err := f.ReadAt(data, list.Offset(i)); err == nil && list.Verify(i, data) == nil {
			p.have.Set(i)
		}
	}
	if _, err := hf.WriteAt(p.have, 0); err != nil {
		p.close()
		return nil, err
	}
	return p, nil
}

// Partial is one blob in the store, complete or being fetched.
type Partial struct {
	store *Store
	list  PieceList

	mu       sync.Mutex
	f        *os.File // .partial while fetching, the complete blob after
	haveFile *os.File
	have     Bitfield
	complete bool
	// The whole-blob hash advances over the contiguous prefix of held
	// pieces as they land, so a fetch in order needs no second pass at the
	// end (20 agents hashing 128 MiB at once would cost seconds on 2 cores).
	whole  hash.Hash
	hashed int
	// early holds copies of verified pieces that landed past a gap in the
	// hashed prefix (pieces in flight finish out of order), so the
	// whole-blob hash reaches them without reading them back from the file:
	// a read of every out-of-order piece was a quarter of a fetcher's
	// reads. At most maxEarlyBytes; pieces beyond are read back. spare
	// keeps the buffers of pieces hashed, for the next ones.
	early      map[int][]byte
	earlyBytes int64
	earlyLimit int64 // maxEarlyBytes; tests lower it
	spare      [][]byte
	readBuf    []byte // for pieces read back
}

// maxEarlyBytes bounds Partial.early, per blob being fetched.
const maxEarlyBytes = 16 << 20

// List is the blob's piece list.
func (p *Partial) List() PieceList { return p.list }

// Have returns a copy of the held-pieces bitfield.
func (p *Partial) Have() Bitfield {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.have.Clone()
}

// Has reports whether piece i is held.
func (p *Partial) Has(i int) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.have.Has(i)
}

// Complete reports whether the whole blob is verified and in place.
func (p *Partial) Complete() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.complete
}

// WritePiece verifies data against piece i's hash and, only if it matches,
// writes it and records it as held. A mismatch returns an error wrapping
// ErrPieceMismatch and writes nothing.
func (p *Partial) WritePiece(i int, data []byte) error {
	if err := p.list.Verify(i, data); err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.have.Has(i) {
		return nil
	}
	if p.complete || p.haveFile == nil {
		return fmt.Errorf("write piece %d of %s: blob is closed", i, p.list.Digest)
	}
	if _, err := p.f.WriteAt(data, p.list.Offset(i)); err != nil {
		return fmt.Errorf("write piece %d of %s: %w", i, p.list.Digest, err)
	}
	p.have.Set(i)
	if _, err := p.haveFile.WriteAt(p.have[i/8:i/8+1], int64(i/8)); err != nil {
		return fmt.Errorf("record piece %d of %s: %w", i, p.list.Digest, err)
	}
	if !p.list.vouched {
		if err := p.advanceHashLocked(i, data); err != nil {
			return err
		}
	}
	go p.store.notify()
	return nil
}

func (p *Partial) advanceHashLocked(justWritten int, data []byte) error {
	if p.whole == nil {
		p.whole = sha256.New()
	}
	for p.hashed < p.list.Count() && p.have.Has(p.hashed) {
		switch b, ok := p.early[p.hashed]; {
		case p.hashed == justWritten:
			p.whole.Write(data)
		case ok:
			p.whole.Write(b)
			delete(p.early, p.hashed)
			p.earlyBytes -= int64(len(b))
			p.spare = append(p.spare, b[:cap(b)])
		default:
			if p.readBuf == nil {
				p.readBuf = make([]byte, p.list.PieceSize)
			}
			b := p.readBuf[:p.list.Len(p.hashed)]
			if _, err := p.f.ReadAt(b, p.list.Offset(p.hashed)); err != nil {
				return fmt.Errorf("hash piece %d of %s: %w", p.hashed, p.list.Digest, err)
			}
			p.whole.Write(b)
		}
		p.hashed++
	}
	if justWritten > p.hashed && p.earlyBytes+int64(len(data)) <= p.earlyLimit {
		var b []byte
		if n := len(p.spare); n > 0 {
			b, p.spare = p.spare[n-1], p.spare[:n-1]
		} else {
			b = make([]byte, p.list.PieceSize)
		}
		b = b[:copy(b[:len(data)], data)]
		if p.early == nil {
			p.early = map[int][]byte{}
		}
		p.early[justWritten] = b
		p.earlyBytes += int64(len(b))
	}
	if p.hashed == p.list.Count() {
		p.early, p.earlyBytes, p.spare, p.readBuf = nil, 0, nil, nil
	}
	return nil
}

// checkWholeLocked finishes the whole-blob hash and compares it with the
// digest; on a mismatch (a piece list that lies) it forgets every piece.
func (p *Partial) checkWholeLocked() error {
	if err := p.advanceHashLocked(-1, nil); err != nil {
		return err
	}
	if got := hex.EncodeToString(p.whole.Sum(nil)); got != p.list.Digest.Hex {
		p.haveFile.Truncate(0)
		p.have = NewBitfield(p.list.Count())
		p.whole, p.hashed = nil, 0
		p.early, p.earlyBytes, p.spare, p.readBuf = nil, 0, nil, nil
		return fmt.Errorf("finish %s: whole blob hashes to sha256:%s; every piece matched the list, so the list is wrong: %w", p.list.Digest, got, ErrPieceMismatch)
	}
	return nil
}

// pieceReader reads piece i from the blob's file, if it is held.
func (p *Partial) pieceReader(i int) (*io.SectionReader, error) {
	p.mu.Lock()
	held, f := p.have.Has(i), p.f
	p.mu.Unlock()
	if !held {
		return nil, fmt.Errorf("piece %d of %s: %w", i, p.list.Digest, os.ErrNotExist)
	}
	return io.NewSectionReader(f, p.list.Offset(i), p.list.Len(i)), nil
}

// ReadPiece returns piece i if it is held.
func (p *Partial) ReadPiece(i int) ([]byte, error) {
	p.mu.Lock()
	held, f := p.have.Has(i), p.f
	p.mu.Unlock()
	if !held {
		return nil, fmt.Errorf("piece %d of %s: %w", i, p.list.Digest, os.ErrNotExist)
	}
	data := make([]byte, p.list.Len(i))
	if _, err := f.ReadAt(data, p.list.Offset(i)); err != nil {
		return nil, fmt.Errorf("read piece %d of %s: %w", i, p.list.Digest, err)
	}
	return data, nil
}

// Finish checks the whole blob against its digest and moves it to its final
// path. It fails if a piece is missing. On a digest mismatch (a piece list
// that lies) the partial data is removed so it is never used.
func (p *Partial) Finish() (string, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	final := p.store.Path(p.list.Digest)
	if p.complete {
		return final, nil
	}
	if n := p.have.Count(); n != p.list.Count() {
		return "", fmt.Errorf("finish %s: %d of %d pieces held", p.list.Digest, n, p.list.Count())
	}
	// A vouched list was built from the blob and received signed: every piece
	// matching it proves the blob, and a second sha256 over every byte is waste.
	if !p.list.vouched {
		if err := p.checkWholeLocked(); err != nil {
			return "", err
		}
	}
	if err := p.f.Sync(); err != nil {
		return "", fmt.Errorf("finish %s: %w", p.list.Digest, err)
	}
	if err := os.Rename(p.store.file(p.list.Digest, ".partial"), final); err != nil {
		return "", fmt.Errorf("finish %s: %w", p.list.Digest, err)
	}
	p.haveFile.Close()
	p.haveFile = nil
	os.Remove(p.store.file(p.list.Digest, ".have"))
	p.complete = true
	go p.store.notify()
	return final, nil
}

func (p *Partial) close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	var errs []error
	if p.haveFile != nil {
		errs = append(errs, p.haveFile.Close())
		p.haveFile = nil
	}
	if p.f != nil {
		errs = append(errs, p.f.Close())
	}
	return errors.Join(errs...)
}

// LinkOrCopy hard-links src to dst, or copies it (through a temporary file renamed
// into place) where a link is not possible, e.g. across file systems.
func LinkOrCopy(src, dst string) error {
	if err := os.Link(src, dst); err == nil {
		return nil
	}
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	tmp := dst + ".tmp"
	out, err := os.Create(tmp)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	if err := out.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, dst)
}
