package pieces

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strings"
	"testing"
)

const goodAnnouncement = `{"peer":{"id":"n1","addr":"https://10.0.0.1:9444"},"digest":"sha256:` +
	"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" + `","have":"gA==","complete":true}`

func TestDecodeAnnouncementIsStrict(t *testing.T) {
	victim := strings.Replace(goodAnnouncement, `"id":"n1"`, `"id":"n2"`, 1)
	for _, tc := range []struct {
		name, body, err string
	}{
		{"good", goodAnnouncement, ""},
		{"good with white space after", goodAnnouncement + "\n \t", ""},
		{"a second object after", goodAnnouncement + victim, "after the JSON"},
		{"garbage after", goodAnnouncement + "}", "after the JSON"},
		{"a key twice", `{"peer":{"id":"n1","addr":"https://h:1"},"peer":{"id":"n2","addr":"https://h:1"}}`, "twice"},
		{"a key twice in another case", `{"peer":{"id":"n1","addr":"https://h:1","ID":"n2"}}`, "twice"},
		{"unknown field", `{"peer":{"id":"n1","addr":"https://h:1"},"for":"n2"}`, "unknown field"},
		{"not an object", `["n1"]`, "cannot unmarshal"},
		{"truncated", goodAnnouncement[:40], "unexpected EOF"},
		{"too big", `{"peer":{"id":"` + strings.Repeat("x", MaxAnnouncementSize) + `"}}`, "more than"},
		{"too deep", strings.Repeat("[", 20) + strings.Repeat("]", 20), "too deep"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, err := DecodeAnnouncement(strings.NewReader(tc.body))
			if tc.err == "" {
				if err != nil || a.Peer.ID != "n1" || !a.Complete || !a.Have.Has(0) {
					t.Fatalf("got %+v, %v", a, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("err = %v, want one saying %q", err, tc.err)
			}
			if !reflect.DeepEqual(a, Announcement{}) {
				t.Fatalf("a refused announcement came back filled: %+v", a)
			}
		})
	}
}

// FuzzDecodeAnnouncement: whatever the decoder accepts, encoding/json reads
// the same way (no reader of announcements sees another peer than the
// tracker records), and a re-encoding decodes to the same value.
func FuzzDecodeAnnouncement(f *testing.F) {
	f.Add([]byte(goodAnnouncement))
	f.Add([]byte(goodAnnouncement + goodAnnouncement))
	f.Add([]byte(`{"peer":{"id":"a","addr":"https://h:1"},"Peer":{"id":"b"}}`))
	f.Add([]byte(`{"peer":{"id":"a"}} x`))
	f.Add([]byte(`{"have":null,"digest":"sha256:00"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		a, err := DecodeAnnouncement(bytes.NewReader(data))
		if err != nil {
			return
		}
		var b Announcement
		if err := json.Unmarshal(data, &b); err != nil {
			t.Fatalf("accepted %q that encoding/json refuses: %v", data, err)
		}
		if !reflect.DeepEqual(a, b) {
			t.Fatalf("%q: strict decoder %+v, encoding/json %+v", data, a, b)
		}
		if a.Digest.Algorithm == "" {
			return // a zero digest does not encode to a parsable one; the tracker refuses it anyway
		}
		again, err := json.Marshal(a)
		if err != nil {
			t.Fatal(err)
		}
		c, err := DecodeAnnouncement(bytes.NewReader(again))
		if err != nil || !reflect.DeepEqual(a.Peer, c.Peer) || a.Digest != c.Digest || !bytes.Equal(a.Have, c.Have) || a.Complete != c.Complete {
			t.Fatalf("re-encoded %q decodes to %+v, %v; want %+v", again, c, err, a)
		}
	})
}

const goodFailureReport = `{"peer":"liar","digest":"sha256:` +
	"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" + `","reason":"not-held"}`

func TestDecodeFailureReportIsStrict(t *testing.T) {
	for _, tc := range []struct {
		name, body, err string
	}{
		{"good", goodFailureReport, ""},
		{"a second object after", goodFailureReport + goodFailureReport, "after the JSON"},
		{"a key twice", `{"peer":"liar","peer":"n2"}`, "twice"},
		{"a key twice in another case", `{"peer":"liar","Peer":"n2"}`, "twice"},
		{"unknown field", strings.Replace(goodFailureReport, `"reason"`, `"by":"n3","reason"`, 1), "unknown field"},
		{"a reporter field", strings.Replace(goodFailureReport, `"peer"`, `"reporter":"n3","peer"`, 1), "unknown field"},
		{"no peer", strings.Replace(goodFailureReport, `"liar"`, `""`, 1), "peer"},
		{"a reason of its own", strings.Replace(goodFailureReport, "not-held", "slow", 1), "reason"},
		{"a bad digest", `{"peer":"liar","digest":"sha256:00","reason":"not-held"}`, "sha256"},
		{"no digest", `{"peer":"liar","reason":"not-held"}`, "digest"},
		{"too big", `{"peer":"` + strings.Repeat("x", MaxFailureReportSize) + `"}`, "more than"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, err := DecodeFailureReport(strings.NewReader(tc.body))
			if tc.err == "" {
				if err != nil || f.Peer != "liar" || f.Reason != FailNotHeld {
					t.Fatalf("got %+v, %v", f, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("err = %v, want one saying %q", err, tc.err)
			}
			if !reflect.DeepEqual(f, FailureReport{}) {
				t.Fatalf("a refused report came back filled: %+v", f)
			}
		})
	}
}

// FuzzDecodeFailureReport: whatever the decoder accepts, encoding/json reads
// the same way and it is a valid report.
func FuzzDecodeFailureReport(f *testing.F) {
	f.Add([]byte(goodFailureReport))
	f.Add([]byte(goodFailureReport + goodFailureReport))
	f.Add([]byte(`{"peer":"a","Peer":"b"}`))
	f.Add([]byte(`{"peer":"a","reason":"unreachable","digest":"sha256:00"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := DecodeFailureReport(bytes.NewReader(data))
		if err != nil {
			return
		}
		var b FailureReport
		if err := json.Unmarshal(data, &b); err != nil {
			t.Fatalf("accepted %q that encoding/json refuses: %v", data, err)
		}
		if r != b {
			t.Fatalf("%q: strict decoder %+v, encoding/json %+v", data, r, b)
		}
		if err := r.Validate(); err != nil {
			t.Fatalf("accepted an invalid report %q: %v", data, err)
		}
	})
}
