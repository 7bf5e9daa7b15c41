package mirror

import "testing"

func TestTOMLQuote(t *testing.T) {
	cases := map[string]string{
		`https://127.0.0.1:505`: `"https://127.0.0.1:505"`,
		"a\"b\\c\n\x7f":         `"a\"b\\c\u000A\u007F"`,
		"]\n[host.\"evil\"]":    `"]\u000A[host.\"evil\"]"`,
	}
	for in, want := range cases {
		if got := tomlQuote(in); got != want {
			t.Errorf("tomlQuote(%q) = %s, want %s", in, got, want)
		}
	}
}
