package bandwidth

import "testing"

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Rate
		bad  bool
	}{
		{"", 0, false},
		{"0", 0, false},
		{"100mbit", 12_500_000, false},
		{"100Mbit", 12_500_000, false},
		{"100MBIT/s", 12_500_000, false},
		{"1Gbit", 125_000_000, false},
		{"1gbit", 125_000_000, false},
		{"8kbit", 1000, false},
		{"8Kbit", 1000, false},
		{"50MB/s", 50_000_000, false},
		{"50MB", 50_000_000, false},
		{"50mb", 50_000_000, false},
		{"1MiB", 1 << 20, false},
		{"2MiB/s", 2 << 20, false},
		{"1kB", 1000, false},
		{"2.5 GB/s", 2_500_000_000, false},
		{"512B", 512, false},
		{"fast", 0, true},
		{"10", 0, true},
		{"1000", 0, true},
		{"-1MB", 0, true},
		{"1e300GB", 0, true},
		{"NaNMB", 0, true},
		{"MB", 0, true},
	} {
		got, err := Parse(tc.in)
		if (err != nil) != tc.bad || got != tc.want {
			t.Errorf("Parse(%q) = %d, %v; want %d, error %v", tc.in, got, err, tc.want, tc.bad)
		}
	}
}

func TestString(t *testing.T) {
	for r, want := range map[Rate]string{0: "unlimited", 12_500_000: "100Mbit/s", 125_000: "1Mbit/s"} {
		if got := r.String(); got != want {
			t.Errorf("%d.String() = %q, want %q", r, got, want)
		}
	}
}
