package pieces

import "math/bits"

// Bitfield records which pieces of a blob are held, one bit per piece, most
// significant bit first (BitTorrent's layout). In JSON it is base64.
type Bitfield []byte

// NewBitfield returns an empty bitfield for n pieces.
func NewBitfield(n int) Bitfield { return make(Bitfield, (n+7)/8) }

// FullBitfield returns a bitfield with all n pieces set.
func FullBitfield(n int) Bitfield {
	b := NewBitfield(n)
	for i := 0; i < n; i++ {
		b.Set(i)
	}
	return b
}

// Has reports whether piece i is set; out-of-range pieces are not.
func (b Bitfield) Has(i int) bool {
	if i < 0 || i/8 >= len(b) {
		return false
	}
	return b[i/8]&(0x80>>(i%8)) != 0
}

// Set marks piece i as held; out-of-range pieces are ignored.
func (b Bitfield) Set(i int) {
	if i >= 0 && i/8 < len(b) {
		b[i/8] |= 0x80 >> (i % 8)
	}
}

// Clear marks piece i as not held.
func (b Bitfield) Clear(i int) {
	if i >= 0 && i/8 < len(b) {
		b[i/8] &^= 0x80 >> (i % 8)
	}
}

// Count is the number of pieces set.
func (b Bitfield) Count() int {
	c := 0
	for _, x := range b {
		c += bits.OnesCount8(x)
	}
	return c
}

// Clone returns a copy that does not share memory with b.
func (b Bitfield) Clone() Bitfield { return append(Bitfield(nil), b...) }
