package tracker

import (
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/flotilla-dev/flotilla/p2p/pieces"
)

func TestCheckPeerAddr(t *testing.T) {
	for _, tc := range []struct {
		name, addr, remote, err string
	}{
		{"its own address", "https://10.0.0.5:9444", "10.0.0.5:51234", ""},
		{"its own IPv6 address", "https://[2001:db8::5]:9444", "[2001:db8::5]:51234", ""},
		{"loopback from loopback (a fleet on one host)", "https://127.0.0.1:9444", "127.0.0.1:51234", ""},
		{"IPv4 in IPv6 from IPv4", "https://[::ffff:10.0.0.5]:9444", "10.0.0.5:1", ""},
		{"another host", "https://10.0.0.6:9444", "10.0.0.5:51234", "another host's address"},
		{"cloud metadata", "https://169.254.169.254:443", "10.0.0.5:1", "link-local"},
		{"cloud metadata from itself", "https://169.254.169.254:443", "169.254.169.254:1", "link-local"},
		{"IPv6 link-local", "https://[fe80::1]:443", "[fe80::1]:1", "link-local"},
		{"IPv6 zone", "https://[fe80::1%25eth0]:443", "10.0.0.5:1", "zone"},
		{"loopback from another host", "https://127.0.0.1:9444", "10.0.0.5:51234", "loopback"},
		{"IPv6 loopback from IPv4 loopback", "https://[::1]:9444", "127.0.0.1:51234", "loopback"},
		{"multicast", "https://224.0.0.1:9444", "10.0.0.5:1", "multicast"},
		{"unspecified", "https://0.0.0.0:9444", "10.0.0.5:1", "unspecified"},
		{"a host name", "https://metadata.google.internal:443", "10.0.0.5:1", "not a host name"},
		{"no port", "https://10.0.0.5", "10.0.0.5:1", "port"},
		{"port zero", "https://10.0.0.5:0", "10.0.0.5:1", "port"},
		{"port too big", "https://10.0.0.5:70000", "10.0.0.5:1", "port"},
		{"http", "http://10.0.0.5:9444", "10.0.0.5:1", "https://IP:port"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := checkPeerAddr(tc.addr, tc.remote)
			if tc.err == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("err = %v, want one saying %q", err, tc.err)
			}
		})
	}
}

func report(peer string, d v1.Hash) pieces.FailureReport {
	return pieces.FailureReport{Peer: peer, Digest: d, Reason: pieces.FailNotHeld}
}

// TestReport: a peer reported by a peer of the blob loses its record at
// once; reported by a second, distinct peer within the window, its
// announcements of that blob are refused until the ban ends. Reports that
// cannot be trusted (about oneself, about the seed, from a node that is no
// peer of the blob) change nothing.
func TestReport(t *testing.T) {
	now := time.Unix(1000, 0)
	tr := New(time.Hour, WithClock(func() time.Time { return now }), WithLimits(Limits{BanTTL: time.Minute}))
	for _, id := range []string{SeedID, "liar", "n1", "n2", "n3"} {
		if err := tr.Announce(ann(id, blobA, 0, 1)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tr.Announce(ann("outsider", blobB)); err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		name     string
		reporter string
		f        pieces.FailureReport
		outcome  ReportOutcome
		err      string
		peers    string // blobA's peers after
	}{
		{"about itself", "n1", report("n1", blobA), ReportIgnored, "about itself", "controller,liar,n1,n2,n3"},
		{"about the seed", "n1", report(SeedID, blobA), ReportIgnored, "seed is not reported", "controller,liar,n1,n2,n3"},
		{"from a node that is no peer of the blob", "outsider", report("liar", blobA), ReportIgnored, "not a peer", "controller,liar,n1,n2,n3"},
		{"a bad reason", "n1", pieces.FailureReport{Peer: "liar", Digest: blobA, Reason: "lies"}, ReportIgnored, "reason", "controller,liar,n1,n2,n3"},
		{"first report", "n1", report("liar", blobA), ReportDropped, "", "controller,n1,n2,n3"},
		{"about a peer with no record", "n2", report("liar", blobA), ReportIgnored, "", "controller,n1,n2,n3"},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			out, _, _, err := tr.Report(st.reporter, st.f)
			if st.err == "" && err != nil || st.err != "" && (err == nil || !strings.Contains(err.Error(), st.err)) {
				t.Fatalf("err = %v, want %q", err, st.err)
			}
			if out != st.outcome {
				t.Errorf("outcome %d, want %d", out, st.outcome)
			}
			if got := ids(tr.Peers(blobA)); got != st.peers {
				t.Errorf("peers %s, want %s", got, st.peers)
			}
		})
	}
	// The liar announces again (an honest peer that restarted would): back,
	// at the end of the order.
	if err := tr.Announce(ann("liar", blobA, 0, 1)); err != nil {
		t.Fatalf("announce after one report: %v", err)
	}
	// The same reporter again does not make two.
	if out, _, _, _ := tr.Report("n1", report("liar", blobA)); out != ReportDropped {
		t.Fatalf("the same reporter twice: outcome %d, want dropped", out)
	}
	if err := tr.Announce(ann("liar", blobA, 0, 1)); err != nil {
		t.Fatalf("announce after two reports of one peer: %v", err)
	}
	out, by, until, err := tr.Report("n2", report("liar", blobA))
	if err != nil || out != ReportBanned || strings.Join(by, ",") != "n1,n2" || !until.Equal(now.Add(time.Minute)) {
		t.Fatalf("second distinct reporter: %d %v %v %v, want banned by n1,n2 for a minute", out, by, until, err)
	}
	if got := ids(tr.Peers(blobA)); strings.Contains(got, "liar") {
		t.Fatalf("peers %s still list the liar", got)
	}
	if err := tr.Announce(ann("liar", blobA, 0, 1)); !errors.Is(err, ErrBanned) {
		t.Fatalf("announce while banned: %v, want ErrBanned", err)
	}
	if err := tr.Announce(ann("liar", blobB)); err != nil {
		t.Fatalf("the ban is for one blob; announcing another: %v", err)
	}
	now = now.Add(time.Minute)
	if err := tr.Announce(ann("liar", blobA)); err != nil {
		t.Fatalf("announce after the ban: %v", err)
	}
}

// TestReportBoundsHold: a reporter makes at most ReportsPerReporter reports
// in a window, and the reports and bans held stay within MaxReportKeys
// however many peers and blobs are reported.
func TestReportBoundsHold(t *testing.T) {
	now := time.Unix(1000, 0)
	tr := New(time.Hour, WithClock(func() time.Time { return now }),
		WithLimits(Limits{ReportsPerReporter: 5, MaxReportKeys: 10, ReportsToBan: 2, MaxBlobsPerPeer: 1000}))
	blob := func(i int) v1.Hash { return v1.Hash{Algorithm: "sha256", Hex: fmt.Sprintf("%064x", i)} }

	t.Run("per reporter", func(t *testing.T) {
		for i := range 8 {
			d := blob(1000 + i)
			for _, id := range []string{"flooder", fmt.Sprintf("victim%d", i)} {
				if err := tr.Announce(ann(id, d)); err != nil {
					t.Fatal(err)
				}
			}
			_, _, _, err := tr.Report("flooder", report(fmt.Sprintf("victim%d", i), d))
			if i < 5 && err != nil {
				t.Fatalf("report %d: %v", i+1, err)
			}
			if i >= 5 && !errors.Is(err, ErrTooManyReports) {
				t.Fatalf("report %d: %v, want ErrTooManyReports", i+1, err)
			}
		}
		now = now.Add(DefaultReportWindow + time.Second)
		d := blob(2000)
		tr.Announce(ann("flooder", d))
		tr.Announce(ann("v", d))
		if _, _, _, err := tr.Report("flooder", report("v", d)); err != nil {
			t.Fatalf("after the window: %v", err)
		}
	})

	t.Run("reports and bans held", func(t *testing.T) {
		for i := range 40 {
			d := blob(i)
			for _, id := range []string{"accused", fmt.Sprintf("r%da", i), fmt.Sprintf("r%db", i)} {
				if err := tr.Announce(ann(id, d)); err != nil {
					t.Fatal(err)
				}
			}
			if _, _, _, err := tr.Report(fmt.Sprintf("r%da", i), report("accused", d)); err != nil {
				t.Fatal(err)
			}
			if i%2 == 0 { // every other blob gets its second report: a ban
				tr.Announce(ann("accused", d))
				if out, _, _, err := tr.Report(fmt.Sprintf("r%db", i), report("accused", d)); err != nil || out != ReportBanned {
					t.Fatalf("blob %d: %d %v, want banned", i, out, err)
				}
			}
			if st := tr.ReportStats(); st.Reports > 10 || st.Bans > 10 || st.Reporters > 10 {
				t.Fatalf("after %d blobs: %+v, bound 10 each", i+1, st)
			}
		}
		// The newest ban holds (the earliest-ending went first).
		if err := tr.Announce(ann("accused", blob(38))); !errors.Is(err, ErrBanned) {
			t.Fatalf("the newest ban: %v, want ErrBanned", err)
		}
	})
}

// TestReportHandler: POST /v1/tracker/report names the reporter by its
// identity, never by a field; without an identity there are no reports.
func TestReportHandler(t *testing.T) {
	tr := New(time.Minute, WithLimits(Limits{ReportsPerReporter: 1}))
	for _, id := range []string{"liar", "n1", "n2"} {
		if err := tr.Announce(ann(id, blobA, 0)); err != nil {
			t.Fatal(err)
		}
	}
	identified := httptest.NewServer(tr.HandlerWith(Access{Identify: func(r *http.Request) (string, bool) {
		n := r.Header.Get("X-Test-Node")
		return n, n != ""
	}}))
	defer identified.Close()
	open := httptest.NewServer(tr.Handler())
	defer open.Close()
	body := `{"peer":"liar","digest":"` + blobA.String() + `","reason":"not-held"}`
	for _, tc := range []struct {
		name, url, from, body string
		want                  int
	}{
		{"a tracker without identities", open.URL, "n1", body, http.StatusNotFound},
		{"no identity", identified.URL, "", body, http.StatusForbidden},
		{"a reporter field", identified.URL, "n1", strings.Replace(body, `"peer"`, `"reporter":"n2","peer"`, 1), http.StatusBadRequest},
		{"a report", identified.URL, "n1", body, http.StatusNoContent},
		{"past the reporter's limit", identified.URL, "n1", strings.Replace(body, "liar", "n2", 1), http.StatusTooManyRequests},
		{"from no peer of the blob", identified.URL, "outsider", body, http.StatusForbidden},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest("POST", tc.url+"/v1/tracker/report", strings.NewReader(tc.body))
			req.Header.Set("X-Test-Node", tc.from)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tc.want {
				t.Fatalf("%d, want %d", resp.StatusCode, tc.want)
			}
		})
	}
	if got := ids(tr.Peers(blobA)); got != "n1,n2" {
		t.Fatalf("peers %s, want n1,n2 (the liar dropped by n1's report)", got)
	}
}
