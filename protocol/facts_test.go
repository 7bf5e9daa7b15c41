package protocol

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestValidateIP(t *testing.T) {
	for _, ok := range []string{"10.0.0.11", "192.168.1.1", "fd00::1", "2001:db8::7", "127.0.0.1", "fe80::1"} {
		if err := ValidateIP(ok); err != nil {
			t.Errorf("%q refused: %v", ok, err)
		}
	}
	for bad, why := range map[string]string{
		"fe80::1%x;touch${IFS}/PWNED;#": "zone",
		"fe80::1%eth0":                  "zone",
		"0.0.0.0":                       "unspecified",
		"::":                            "unspecified",
		"224.0.0.1":                     "multicast",
		"ff02::1":                       "multicast",
		"10.0.0.1/24":                   "not an IP",
		"10.0.0.1 ":                     "not an IP",
		"FD00::1":                       "canonical",
		"":                              "not an IP",
		"10.0.0.1;reboot":               "not an IP",
	} {
		if err := ValidateIP(bad); err == nil || !strings.Contains(err.Error(), why) {
			t.Errorf("%q: %v, want an error about %s", bad, err, why)
		}
	}
}

func TestValidateLabels(t *testing.T) {
	for _, l := range []map[string]string{
		nil, {"role": "master"}, {"rack": "r7", "zone": "z1"}, {"node-role.kubernetes.io/master": ""}, {"a.b_c-d": "A.b_c-9"},
	} {
		if err := ValidateLabels("labels", l); err != nil {
			t.Errorf("%v refused: %v", l, err)
		}
	}
	for name, l := range map[string]map[string]string{
		"semicolon value":   {"role": "master;reboot"},
		"subst value":       {"role": "$(id)"},
		"backquote value":   {"role": "`id`"},
		"newline value":     {"role": "a\nb"},
		"quote value":       {"role": `a"b`},
		"space value":       {"role": "a b"},
		"long value":        {"role": strings.Repeat("a", 64)},
		"dash start":        {"role": "-x"},
		"empty key":         {"": "x"},
		"semicolon key":     {"a;b": "x"},
		"upper prefix":      {"Example.com/a": "x"},
		"two slashes":       {"a/b/c": "x"},
		"long name":         {strings.Repeat("k", 64): "x"},
		"non-ASCII":         {"rôle": "x"},
		"too many labels":   manyLabels(MaxLabels + 1),
		"dollar brace name": {"${IFS}": "x"},
	} {
		if err := ValidateLabels("labels", l); err == nil {
			t.Errorf("%s: %v accepted", name, l)
		}
	}
}

func manyLabels(n int) map[string]string {
	m := map[string]string{}
	for i := range n {
		m["k"+strings.Repeat("x", i%50)+string(rune('a'+i%26))+string(rune('a'+i/26))] = "v"
	}
	return m
}

func goodFacts() Facts {
	return Facts{Hostname: "node1", IPs: []string{"10.0.0.11", "fd00::11"}, Arch: "amd64", OS: "linux (Debian GNU/Linux 12 (bookworm))",
		Kernel: "6.1.0-18-amd64", MachineID: "0123456789abcdef0123456789abcdef", AgentVersion: "v0.3.0-12-gabcdef", Labels: map[string]string{"rack": "r7"}}
}

func TestValidateFactsNamesTheField(t *testing.T) {
	f := goodFacts()
	if err := ValidateFacts(&f); err != nil {
		t.Fatalf("good facts refused: %v", err)
	}
	for field, mutate := range map[string]func(*Facts){
		"facts.ips[1]":         func(f *Facts) { f.IPs[1] = "fe80::1%x;touch${IFS}/PWNED;#" },
		"facts.ips":            func(f *Facts) { f.IPs = make([]string, MaxIPs+1) },
		"facts.arch":           func(f *Facts) { f.Arch = "amd64;id" },
		`facts.labels["rack"]`: func(f *Facts) { f.Labels["rack"] = "$(id)" },
		"facts.labels key":     func(f *Facts) { f.Labels["a b"] = "x" },
		"facts.hostname":       func(f *Facts) { f.Hostname = "h\nforged log line" },
		"facts.kernel":         func(f *Facts) { f.Kernel = strings.Repeat("k", MaxFreeTextLen+1) },
		"facts.os":             func(f *Facts) { f.OS = "linux\x1b[31m" },
		"facts.machineID":      func(f *Facts) { f.MachineID = "\x00" },
		"facts.agentVersion":   func(f *Facts) { f.AgentVersion = "\xff\xfe" },
	} {
		f := goodFacts()
		f.IPs = append([]string{}, f.IPs...)
		f.Labels = map[string]string{"rack": "r7"}
		mutate(&f)
		err := ValidateFacts(&f)
		var fe *FieldError
		if !errors.As(err, &fe) || fe.Field != field {
			t.Errorf("%s: got %v, want a FieldError naming %s", field, err, field)
		}
	}
}

func TestDecodeRegisterAndJoinRequest(t *testing.T) {
	good, _ := json.Marshal(Register{Name: "node1", Facts: goodFacts(), HeartbeatInterval: 5 * time.Second, PeerURL: "https://10.0.0.11:9444"})
	if _, err := DecodeRegister(good); err != nil {
		t.Fatalf("good registration refused: %v", err)
	}
	for name, data := range map[string]string{
		"trailing data":   string(good) + `{"name":"other"}`,
		"unknown field":   `{"name":"node1","facts":{"arch":"amd64"},"labelz":{}}`,
		"bad name":        `{"name":"n;id","facts":{}}`,
		"bad peer URL":    `{"name":"n","facts":{},"peerURL":"https://u:p@h:1/x?y"}`,
		"negative beat":   `{"name":"n","facts":{},"heartbeatInterval":-1}`,
		"not JSON":        "\x00{",
		"labels not map":  `{"name":"n","facts":{"labels":"role=master"}}`,
		"zoned IPv6 fact": `{"name":"n","facts":{"ips":["fe80::1%x;touch${IFS}/PWNED;#"]}}`,
	} {
		if _, err := DecodeRegister([]byte(data)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	jr, _ := json.Marshal(JoinRequest{Token: "0123abcd.00", Name: "node1", Facts: goodFacts(), CSR: []byte("pem")})
	if _, err := DecodeJoinRequest(jr); err != nil {
		t.Fatalf("good join request refused: %v", err)
	}
	big := `{"token":"` + strings.Repeat("a", MaxJoinRequestBytes) + `"}`
	if _, err := DecodeJoinRequest([]byte(big)); err == nil {
		t.Error("oversized join request accepted")
	}
	if _, err := DecodeJoinRequest([]byte(`{"token":"x","name":"a$(id)","facts":{}}`)); err == nil {
		t.Error("join request with a hostile name accepted")
	}
}

// inertForShell: every byte of an accepted name, IP or label is one a shell,
// a unit file or YAML takes literally.
func inertForShell(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("._-:/", c) >= 0) {
			return false
		}
	}
	return true
}

func checkAccepted(t *testing.T, name string, f *Facts) {
	t.Helper()
	if !inertForShell(name) {
		t.Fatalf("accepted node name %q", name)
	}
	for _, ip := range f.IPs {
		if !inertForShell(ip) || ValidateIP(ip) != nil {
			t.Fatalf("accepted IP %q", ip)
		}
	}
	for k, v := range f.Labels {
		if !inertForShell(k) || !inertForShell(v) {
			t.Fatalf("accepted label %q=%q", k, v)
		}
	}
	if !inertForShell(f.Arch) {
		t.Fatalf("accepted arch %q", f.Arch)
	}
	for _, s := range []string{f.Hostname, f.OS, f.Kernel, f.MachineID, f.AgentVersion} {
		if strings.ContainsAny(s, "\n\r\x00\x1b") {
			t.Fatalf("accepted free text %q", s)
		}
	}
}

// FuzzDecodeJoinRequest: what a node POSTs to /v1/join never panics the
// decoder, and whatever it accepts is inert in a shell, a unit file or a log.
func FuzzDecodeJoinRequest(f *testing.F) {
	good, _ := json.Marshal(JoinRequest{Token: "0123abcd.00", Name: "node1", Facts: goodFacts()})
	f.Add(good)
	f.Add([]byte(`{"token":"a.b","name":"n","facts":{"ips":["fe80::1%x;touch${IFS}/PWNED;#"],"labels":{"role":"$(id)"}}}`))
	f.Add([]byte(`{"name":"10.0.0.11","facts":{"ips":["::ffff:1.2.3.4"]}} {}`))
	f.Add([]byte(`{"token":"a.b","name":"n1","Name":"n2","facts":{}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := DecodeJoinRequest(data)
		if err != nil {
			return
		}
		sameAsEncodingJSON(t, data, r)
		checkAccepted(t, r.Name, &r.Facts)
	})
}

// FuzzDecodeRegister: the same for a registration (sent at every reconnect).
func FuzzDecodeRegister(f *testing.F) {
	good, _ := json.Marshal(Register{Name: "node1", Facts: goodFacts(), HeartbeatInterval: time.Second, PeerURL: "https://10.0.0.11:9444"})
	f.Add(good)
	f.Add([]byte(`{"name":"n","facts":{"hostname":"h\u2028x","os":"\u202e"},"peerURL":"http://[fe80::1%25x]:1"}`))
	f.Add([]byte(`{"name":"n1","facts":{"labels":{"role":"worker","role":"master"}},"heartbeatInterval":1000000000}`))
	f.Add([]byte(`{"name":"n1","facts":{"kernel":"a","\u212aernel":"b"},"facts":{},"heartbeatInterval":1000000000}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := DecodeRegister(data)
		if err != nil {
			return
		}
		sameAsEncodingJSON(t, data, r)
		checkAccepted(t, r.Name, &r.Facts)
		if r.PeerURL != "" && strings.ContainsAny(r.PeerURL, " \n\r\t\"'`;$") {
			t.Fatalf("accepted peer URL %q", r.PeerURL)
		}
	})
}
