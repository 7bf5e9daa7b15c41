package bench

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
)

// With FLOTILLA_BENCH_PROFILE=DIR every flotilla process of the benchmark
// writes a Go CPU profile of its whole life (FLOTILLA_CPU_PROFILE, read by
// cmd/flotilla) to DIR/<method>-<N>/<process>.pprof, and the benchmark logs
// where their CPU went, by kind of work, for the serving side (the seed and
// tracker, or the controller) and for the hosts (fetchers or agents).

// profileKinds sort a profile's functions (flat time) into kinds of work,
// first match wins; what matches none is "other".
var profileKinds = []struct {
	name string
	re   *regexp.Regexp
}{
	{"TLS crypto (AES-GCM, ChaCha20)", regexp.MustCompile(`crypto/internal/fips140/aes|crypto/aes|/gcm\.|chacha20|poly1305|crypto/cipher|crypto/subtle|crypto/tls\.\(\*halfConn\)`)},
	{"sha256", regexp.MustCompile(`sha256`)},
	{"syscalls (read, write, pread, pwrite)", regexp.MustCompile(`^syscall\.|^internal/runtime/syscall|^golang\.org/x/sys/unix\.`)},
	{"memmove, copies", regexp.MustCompile(`^runtime\.memmove|^bytes\.|^bufio\.`)},
	{"GC, malloc", regexp.MustCompile(`^runtime\.(mallocgc|gc|scanobject|greyobject|findObject|markBits|heapBits|memclr|sweep|bgsweep|bgscavenge|scanblock|scanstack|wbBuf|spanOf|typePointers|nextFreeFast|\(\*mspan\)|\(\*mheap\)|\(\*mcache\)|\(\*mcentral\)|\(\*gcWork\)|\(\*gcBits\)|\(\*sweepLocked\)|\(\*pageAlloc\)|\(\*scavengerState\)|bulkBarrier|publicationBarrier|newobject|makeslice|growslice|mapassign|deductAssistCredit|(.*)[Mm]arkWorker)`)},
	{"gzip, tar (unpack)", regexp.MustCompile(`compress/|archive/tar|hash/crc32|hash/adler32`)},
	{"JSON, NATS", regexp.MustCompile(`encoding/json|nats-io|encoding/base64`)},
	{"scheduler, timers, netpoll", regexp.MustCompile(`^runtime\.|^internal/runtime|^time\.|^sync\.|^internal/sync|^context\.`)},
}

// profileRole says whether a profile is of the serving side or of a host.
func profileRole(file string) string {
	base := filepath.Base(file)
	if strings.HasPrefix(base, "n") {
		return "hosts"
	}
	return strings.TrimSuffix(base, ".pprof")
}

// summarizeProfiles returns one line per role of the profiles in dir: CPU
// seconds sampled, the share of each kind of work, and the top functions.
func summarizeProfiles(dir string) (string, error) {
	files, err := filepath.Glob(filepath.Join(dir, "*.pprof"))
	if err != nil || len(files) == 0 {
		return "", fmt.Errorf("no profiles in %s: %v", dir, err)
	}
	byRole := map[string][]string{}
	var roles []string
	for _, f := range files {
		if st, err := os.Stat(f); err != nil || st.Size() == 0 {
			continue // a process killed before it wrote its profile
		}
		r := profileRole(f)
		if byRole[r] == nil {
			roles = append(roles, r)
		}
		byRole[r] = append(byRole[r], f)
	}
	var b strings.Builder
	for _, r := range roles {
		top, total, err := topFunctions(byRole[r])
		if err != nil {
			return "", err
		}
		shares := map[string]float64{}
		for _, fn := range top {
			kind := "other"
			for _, k := range profileKinds {
				if k.re.MatchString(fn.name) {
					kind = k.name
					break
				}
			}
			shares[kind] += fn.ms
		}
		fmt.Fprintf(&b, "%s (%d profiles, %.1f CPU s sampled):", r, len(byRole[r]), total/1000)
		for _, k := range append(kindNames(), "other") {
			if total > 0 {
				fmt.Fprintf(&b, " %s %.0f%%;", k, 100*shares[k]/total)
			}
		}
		b.WriteString("\n  top:")
		for i, fn := range top {
			if i == 12 {
				break
			}
			fmt.Fprintf(&b, " %s %.1f%%;", fn.name, 100*fn.ms/total)
		}
		b.WriteString("\n")
	}
	return b.String(), nil
}

func kindNames() []string {
	var out []string
	for _, k := range profileKinds {
		out = append(out, k.name)
	}
	return out
}

type flatFn struct {
	name string
	ms   float64
}

// topFunctions merges profiles with `go tool pprof -top` and returns every
// function's flat time, largest first, and the total sampled.
func topFunctions(files []string) ([]flatFn, float64, error) {
	args := append([]string{"tool", "pprof", "-top", "-unit=ms", "-nodecount=100000", "-nodefraction=0", "-edgefraction=0"}, files...)
	out, err := exec.Command("go", args...).Output()
	if err != nil {
		return nil, 0, fmt.Errorf("go tool pprof %s: %w", strings.Join(files, " "), err)
	}
	var fns []flatFn
	var total float64
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		// "  123ms 12.3% 12.3%  456ms 45.6%  name ..." after the header.
		if len(f) < 6 || !strings.HasSuffix(f[0], "ms") || !strings.HasSuffix(f[1], "%") {
			continue
		}
		ms, err := strconv.ParseFloat(strings.TrimSuffix(f[0], "ms"), 64)
		if err != nil {
			continue
		}
		fns = append(fns, flatFn{name: strings.Join(f[5:], " "), ms: ms})
		total += ms
	}
	return fns, total, sc.Err()
}
