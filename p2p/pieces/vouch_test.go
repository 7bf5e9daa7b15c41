package pieces

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

// A vouched list (from a signed task) skips the whole-blob hash: a list that lies
// about the digest but whose pieces match is then the signer's word. An unvouched
// list (from a peer, a file) is checked whole and refused.
func TestVouchedListSkipsTheWholeHash(t *testing.T) {
	data := bytes.Repeat([]byte("flotilla"), 3000)
	list, err := ComputeWithPieceSize(bytes.NewReader(data), int64(len(data)), MinPieceSize)
	if err != nil {
		t.Fatal(err)
	}
	lying := list
	lying.Hashes = append([]string(nil), list.Hashes...)
	lying.Digest.Hex = strings.Repeat("0", 64) // pieces right, digest wrong
	for _, vouched := range []bool{false, true} {
		l := lying
		if vouched {
			l.Vouch()
		}
		st, err := OpenStore(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		p, err := st.Open(l)
		if err != nil {
			t.Fatal(err)
		}
		for i := range l.Count() {
			if err := p.WritePiece(i, data[l.Offset(i):l.Offset(i)+l.Len(i)]); err != nil {
				t.Fatal(err)
			}
		}
		_, err = p.Finish()
		if vouched && err != nil {
			t.Errorf("vouched list: %v", err)
		}
		if !vouched && !errors.Is(err, ErrPieceMismatch) {
			t.Errorf("unvouched lying list: Finish = %v, want a mismatch", err)
		}
	}
	var decoded PieceList
	b, _ := json.Marshal(func() PieceList { l := list; l.Vouch(); return l }())
	if err := json.Unmarshal(b, &decoded); err != nil || decoded.Vouched() {
		t.Errorf("a list read from JSON must never be vouched for: %v %v", decoded.Vouched(), err)
	}
}
