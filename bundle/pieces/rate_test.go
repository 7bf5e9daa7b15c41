package pieces

import "testing"

func TestParseRate(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
		bad  bool
	}{
		{"", 0, false},
		{"0", 0, false},
		{"100mbit", 12_500_000, false},
		{"50MB/s", 50_000_000, false},
		{"1MiB", 1 << 20, false},
		{"2.5 GB/s", 2_500_000_000, false},
		{"512B", 512, false},
		{"fast", 0, true},
		{"10", 0, true},
		{"-1MB", 0, true},
	} {
		got, err := ParseRate(tc.in)
		if (err != nil) != tc.bad || got != tc.want {
			t.Errorf("ParseRate(%q) = %d, %v; want %d, error %v", tc.in, got, err, tc.want, tc.bad)
		}
	}
}
