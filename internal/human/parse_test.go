package human

import "testing"

func TestParseBytes(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
		bad  bool
	}{
		{"256KiB", 256 << 10, false}, {"64MiB", 64 << 20, false}, {"2GB", 2e9, false}, {"512b", 512, false},
		{"1.5 MiB", 3 << 19, false}, {"", 0, true}, {"10", 0, true}, {"-1KiB", 0, true}, {"huge", 0, true},
	} {
		got, err := ParseBytes(tc.in)
		if (err != nil) != tc.bad || got != tc.want {
			t.Errorf("ParseBytes(%q) = %d, %v; want %d, error %v", tc.in, got, err, tc.want, tc.bad)
		}
	}
}
