package protocol

import (
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Limits on what a node may say about itself (join request and registration).
// Nothing a node reports is trusted: the controller refuses a report that
// breaks any of them, before it stores or renders a single value.
const (
	MaxNodeNameLen   = 128
	MaxIPs           = 64
	MaxLabels        = 64
	MaxLabelKeyLen   = 253 + 1 + 63 // DNS subdomain prefix, '/', name
	MaxLabelValueLen = 63
	MaxHostnameLen   = 253
	MaxFreeTextLen   = 256 // kernel, OS, agent version
	MaxMachineIDLen  = 128
	MaxArchLen       = 32
	MaxPeerURLLen    = 512
	// MaxJoinRequestBytes caps a join request body (a CSR and the facts fit in far less).
	MaxJoinRequestBytes = 64 << 10
)

// FieldError names the reported field that was refused and why.
type FieldError struct {
	Field string // e.g. "facts.ips[0]", "facts.labels[\"role\"]"
	Value string // the refused value, shortened and quoted for logs
	Msg   string
}

func (e *FieldError) Error() string {
	if e.Value == "" {
		return fmt.Sprintf("%s: %s", e.Field, e.Msg)
	}
	return fmt.Sprintf("%s %s: %s", e.Field, e.Value, e.Msg)
}

func fieldErr(field, value, format string, args ...any) *FieldError {
	return &FieldError{Field: field, Value: logValue(value), Msg: fmt.Sprintf(format, args...)}
}

// logValue quotes v for a log line, shortened to 80 bytes: a refused value
// must neither flood the log nor forge lines in it.
func logValue(v string) string {
	if len(v) > 80 {
		v = v[:80] + "…"
	}
	return fmt.Sprintf("%q", v)
}

// ValidateIP accepts one plain unicast address in canonical form, as
// netip.Addr.String prints it: no zone ("fe80::1%eth0"), no prefix length, not
// unspecified (0.0.0.0, ::) and not multicast. The canonical form keeps what is
// stored exactly what any later parse prints.
func ValidateIP(s string) error {
	a, err := netip.ParseAddr(s)
	switch {
	case err != nil:
		return fmt.Errorf("not an IP address")
	case a.Zone() != "":
		return fmt.Errorf("zoned address not allowed (a zone is free text)")
	case a.IsUnspecified():
		return fmt.Errorf("unspecified address not allowed")
	case a.IsMulticast():
		return fmt.Errorf("multicast address not allowed")
	case a.String() != s:
		return fmt.Errorf("not in canonical form (want %s)", a.String())
	}
	return nil
}

// isAlnum is [A-Za-z0-9].
func isAlnum(r rune) bool {
	return r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9'
}

// labelName checks the Kubernetes label-name shape: 1–63 of [A-Za-z0-9._-],
// starting and ending with a letter or digit.
func labelName(s string) error {
	if s == "" || len(s) > 63 {
		return errors.New("want 1 to 63 characters")
	}
	for i, r := range s {
		if !isAlnum(r) && !(r == '-' || r == '_' || r == '.') {
			return fmt.Errorf("character %q at %d not allowed (letters, digits, '-', '_', '.')", r, i)
		}
	}
	if !isAlnum(rune(s[0])) || !isAlnum(rune(s[len(s)-1])) {
		return errors.New("must start and end with a letter or digit")
	}
	return nil
}

// ValidateLabelKey accepts Kubernetes-style keys: NAME or PREFIX/NAME, NAME as
// labelName, PREFIX a DNS subdomain (lower-case letters, digits, '-', '.').
func ValidateLabelKey(k string) error {
	prefix, name, hasPrefix := strings.Cut(k, "/")
	if !hasPrefix {
		name, prefix = prefix, ""
	}
	if hasPrefix {
		if prefix == "" || len(prefix) > 253 {
			return errors.New("prefix: want 1 to 253 characters")
		}
		for _, part := range strings.Split(prefix, ".") {
			if part == "" || len(part) > 63 {
				return errors.New("prefix: want DNS labels of 1 to 63 characters separated by '.'")
			}
			for i, r := range part {
				if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' && i > 0 && i < len(part)-1) {
					return fmt.Errorf("prefix: character %q not allowed (lower-case letters, digits, inner '-')", r)
				}
			}
		}
	}
	if err := labelName(name); err != nil {
		return fmt.Errorf("name: %w", err)
	}
	return nil
}

// ValidateLabelValue accepts "" or a label name (1–63 of [A-Za-z0-9._-],
// starting and ending with a letter or digit).
func ValidateLabelValue(v string) error {
	if v == "" {
		return nil
	}
	return labelName(v)
}

// ValidateLabels checks every key and value and the count.
func ValidateLabels(field string, l map[string]string) error {
	if len(l) > MaxLabels {
		return fieldErr(field, "", "%d labels, at most %d", len(l), MaxLabels)
	}
	folded := make(map[string]string, len(l))
	for _, k := range sortedKeys(l) {
		if err := ValidateLabelKey(k); err != nil {
			return fieldErr(field+" key", k, "%v", err)
		}
		// A node's labels travel in JSON objects whose keys DecodeStrict
		// compares regardless of letter case: keys must differ in more than that.
		if other, ok := folded[foldKey(k)]; ok {
			return fieldErr(field+" key", k, "the same key as %q but for letter case", other)
		}
		folded[foldKey(k)] = k
		if err := ValidateLabelValue(l[k]); err != nil {
			return fieldErr(fmt.Sprintf("%s[%q]", field, k), l[k], "%v", err)
		}
	}
	return nil
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// freeText accepts up to max bytes of printable UTF-8 (spaces allowed, no
// control characters, no newlines): shown to people, never rendered into a
// command or file.
func freeText(field, s string, max int) error {
	if len(s) > max {
		return fieldErr(field, s, "%d bytes, at most %d", len(s), max)
	}
	if !utf8.ValidString(s) {
		return fieldErr(field, s, "not valid UTF-8")
	}
	for _, r := range s {
		if !unicode.IsPrint(r) {
			return fieldErr(field, s, "non-printable character %q", r)
		}
	}
	return nil
}

// ValidateFacts checks everything a node reports about itself; the error is a
// *FieldError naming the first refused field.
func ValidateFacts(f *Facts) error {
	if len(f.IPs) > MaxIPs {
		return fieldErr("facts.ips", "", "%d addresses, at most %d", len(f.IPs), MaxIPs)
	}
	for i, ip := range f.IPs {
		if err := ValidateIP(ip); err != nil {
			return fieldErr(fmt.Sprintf("facts.ips[%d]", i), ip, "%v", err)
		}
	}
	if len(f.Arch) > MaxArchLen {
		return fieldErr("facts.arch", f.Arch, "at most %d characters", MaxArchLen)
	}
	for _, r := range f.Arch {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '_') {
			return fieldErr("facts.arch", f.Arch, "only lower-case letters, digits and '_' (a GOARCH such as amd64)")
		}
	}
	if err := ValidateLabels("facts.labels", f.Labels); err != nil {
		return err
	}
	for _, ft := range []struct {
		field, value string
		max          int
	}{
		{"facts.hostname", f.Hostname, MaxHostnameLen},
		{"facts.os", f.OS, MaxFreeTextLen},
		{"facts.kernel", f.Kernel, MaxFreeTextLen},
		{"facts.agentVersion", f.AgentVersion, MaxFreeTextLen},
		{"facts.machineID", f.MachineID, MaxMachineIDLen},
	} {
		if err := freeText(ft.field, ft.value, ft.max); err != nil {
			return err
		}
	}
	return nil
}

// ValidatePeerURL accepts "" or an http(s)://host[:port] URL without user, query or fragment.
func ValidatePeerURL(s string) error {
	if s == "" {
		return nil
	}
	if len(s) > MaxPeerURLLen {
		return fieldErr("peerURL", s, "%d bytes, at most %d", len(s), MaxPeerURLLen)
	}
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.User != nil ||
		u.RawQuery != "" || u.Fragment != "" || (u.Path != "" && u.Path != "/") || strings.ContainsAny(s, " \t\r\n") {
		return fieldErr("peerURL", s, "want https://HOST:PORT")
	}
	return nil
}

// Validate checks a registration: the name, the facts, the interval and the peer URL.
func (r *Register) Validate() error {
	if err := ValidateNodeName(r.Name); err != nil {
		return &FieldError{Field: "name", Value: logValue(r.Name), Msg: err.Error()}
	}
	if err := ValidateHeartbeatInterval(r.HeartbeatInterval); err != nil {
		return fieldErr("heartbeatInterval", r.HeartbeatInterval.String(), "%v", err)
	}
	if err := ValidateFacts(&r.Facts); err != nil {
		return err
	}
	return ValidatePeerURL(r.PeerURL)
}

// Validate checks a join request's name and facts (not its token).
func (r *JoinRequest) Validate() error {
	if err := ValidateNodeName(r.Name); err != nil {
		return &FieldError{Field: "name", Value: logValue(r.Name), Msg: err.Error()}
	}
	if len(r.Token) > 256 {
		return fieldErr("token", "", "%d bytes, at most 256", len(r.Token))
	}
	return ValidateFacts(&r.Facts)
}

// DecodeJoinRequest decodes (DecodeStrict) and validates a join request body.
func DecodeJoinRequest(data []byte) (*JoinRequest, error) {
	if len(data) > MaxJoinRequestBytes {
		return nil, fmt.Errorf("join request: %d bytes, at most %d", len(data), MaxJoinRequestBytes)
	}
	var r JoinRequest
	if err := DecodeStrict(data, MaxJoinRequestBytes, &r); err != nil {
		return nil, err
	}
	if err := r.Validate(); err != nil {
		return nil, err
	}
	return &r, nil
}

// DecodeRegister decodes (DecodeStrict) and validates a registration.
func DecodeRegister(data []byte) (*Register, error) {
	var r Register
	if err := DecodeStrict(data, MaxRegisterBytes, &r); err != nil {
		return nil, err
	}
	if err := r.Validate(); err != nil {
		return nil, err
	}
	return &r, nil
}
