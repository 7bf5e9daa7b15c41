package protocol

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"
)

func newKey(t testing.TB) (ed25519.PublicKey, ed25519.PrivateKey) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return pub, priv
}

func sampleTask(seq uint64, expires time.Time) *Task {
	return &Task{
		ID: "t-1", Node: "web-1.example", Seq: seq, Issued: time.Now().UTC().Truncate(time.Second), Expires: expires.UTC(),
		Image: "sha256:abc",
		Steps: []Step{
			{Name: "hello", Kind: "exec", Command: []string{"echo", "hi"}, Env: map[string]string{"A": "1"}, Timeout: 3 * time.Second, Digest: "sha256:d1"},
			{Kind: "files", Payload: json.RawMessage(`{"files":[{"path":"/etc/x","mode":420}]}`), Shell: "true"},
		},
	}
}

func TestMessagesRoundTrip(t *testing.T) {
	exp := time.Now().Add(time.Minute)
	cases := []any{
		sampleTask(7, exp),
		&Register{Name: "n1", Facts: Facts{Hostname: "h", IPs: []string{"10.0.0.1"}, Arch: "arm64", OS: "linux", Kernel: "6.1", MachineID: "m", AgentVersion: "v1", Labels: map[string]string{"rack": "r7"}}, HeartbeatInterval: time.Second},
		&Heartbeat{Name: "n1", Time: time.Now().UTC().Truncate(time.Millisecond), Interval: 5 * time.Second, Running: 2},
		&Cancel{TaskID: "t-1", Node: "n1", Seq: 9, Expires: exp.UTC()},
		&Event{Type: EventStepResult, Task: "t", Node: "n", N: 3, Step: 1, Result: &StepResult{ExitCode: 2, Duration: time.Second, TimedOut: true}},
		&Event{Type: EventProgress, Progress: &Progress{Done: 5, Total: 10, Message: "layers"}},
		&Event{Type: EventTaskResult, Final: &TaskResult{OK: false, ExitCode: 3, FailedStep: 0, Canceled: true}},
		&Credentials{Node: "n", NATSURLs: []string{"tls://h:4222"}, User: "u", Password: "p", CAPEM: []byte("pem"), SigningKey: []byte{1, 2}},
	}
	for _, in := range cases {
		t.Run(reflect.TypeOf(in).Elem().Name(), func(t *testing.T) {
			data, err := Encode(in)
			if err != nil {
				t.Fatal(err)
			}
			out := reflect.New(reflect.TypeOf(in).Elem()).Interface()
			if err := Decode(data, out); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(in, out) {
				t.Errorf("round trip changed the message:\n in: %+v\nout: %+v", in, out)
			}
		})
	}
}

func TestSignedTaskRoundTrip(t *testing.T) {
	pub, priv := newKey(t)
	in := sampleTask(1, time.Now().Add(time.Minute))
	data, err := Sign(priv, TypeTask, in)
	if err != nil {
		t.Fatal(err)
	}
	v := NewVerifier(pub, "web-1.example", 0)
	out, err := v.OpenTask(data)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(in, out) {
		t.Errorf("signed round trip changed the task:\n in: %+v\nout: %+v", in, out)
	}
	if v.LastSeq() != 1 {
		t.Errorf("LastSeq = %d, want 1", v.LastSeq())
	}
}

func TestVerifierRefuses(t *testing.T) {
	pub, priv := newKey(t)
	_, otherPriv := newKey(t)
	now := time.Now()
	sign := func(key ed25519.PrivateKey, typ string, v any) []byte {
		data, err := Sign(key, typ, v)
		if err != nil {
			t.Fatal(err)
		}
		return data
	}
	tamper := func(data []byte) []byte {
		var env SignedEnvelope
		if err := json.Unmarshal(data, &env); err != nil {
			t.Fatal(err)
		}
		env.Body = []byte(strings.Replace(string(env.Body), `"echo"`, `"rm"`, 1))
		out, _ := json.Marshal(env)
		return out
	}
	good := sign(priv, TypeTask, sampleTask(10, now.Add(time.Minute)))
	cases := []struct {
		name    string
		lastSeq uint64
		data    []byte
		want    error
	}{
		{"forged by another key", 0, sign(otherPriv, TypeTask, sampleTask(10, now.Add(time.Minute))), ErrBadSignature},
		{"body changed after signing", 0, tamper(good), ErrBadSignature},
		{"unsigned", 0, func() []byte { b, _ := json.Marshal(SignedEnvelope{Type: TypeTask, Body: []byte(`{}`)}); return b }(), ErrBadSignature},
		{"not json", 0, []byte("\x00garbage"), ErrMalformed},
		{"cancel presented as task", 0, sign(priv, TypeCancel, &Cancel{TaskID: "t", Node: "web-1.example", Seq: 11, Expires: now.Add(time.Minute)}), ErrMalformed},
		{"expired", 0, sign(priv, TypeTask, sampleTask(10, now.Add(-time.Minute))), ErrExpired},
		{"replayed", 10, good, ErrReplayed},
		{"older sequence", 11, good, ErrReplayed},
		{"for another node", 0, sign(priv, TypeTask, func() *Task { t := sampleTask(10, now.Add(time.Minute)); t.Node = "web-2"; return t }()), ErrWrongNode},
		{"no steps", 0, sign(priv, TypeTask, func() *Task { t := sampleTask(10, now.Add(time.Minute)); t.Steps = nil; return t }()), ErrMalformed},
		{"bad task id", 0, sign(priv, TypeTask, func() *Task { t := sampleTask(10, now.Add(time.Minute)); t.ID = "a.b"; return t }()), ErrMalformed},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			v := NewVerifier(pub, "web-1.example", tc.lastSeq)
			task, err := v.OpenTask(tc.data)
			if !errors.Is(err, tc.want) {
				t.Fatalf("OpenTask = %+v, %v; want %v", task, err, tc.want)
			}
			if v.LastSeq() != tc.lastSeq {
				t.Errorf("a refused task moved LastSeq to %d", v.LastSeq())
			}
		})
	}
}

func TestReplayOfAcceptedTask(t *testing.T) {
	pub, priv := newKey(t)
	data, _ := Sign(priv, TypeTask, sampleTask(5, time.Now().Add(time.Minute)))
	v := NewVerifier(pub, "web-1.example", 0)
	if _, err := v.OpenTask(data); err != nil {
		t.Fatal(err)
	}
	if _, err := v.OpenTask(data); !errors.Is(err, ErrReplayed) {
		t.Fatalf("second delivery: %v, want ErrReplayed", err)
	}
	c, _ := Sign(priv, TypeCancel, &Cancel{TaskID: "t-1", Node: "web-1.example", Seq: 6, Expires: time.Now().Add(time.Minute)})
	if _, err := v.OpenCancel(c); err != nil {
		t.Fatalf("cancel with the next sequence: %v", err)
	}
	if _, err := v.OpenCancel(c); !errors.Is(err, ErrReplayed) {
		t.Fatalf("replayed cancel: %v", err)
	}
}

func TestSubjects(t *testing.T) {
	if got := TaskSubject("10.0.0.1"); got != "flotilla.v1.to.10~0~0~1.task" {
		t.Errorf("TaskSubject = %q", got)
	}
	node, ok := NodeFromSubject(HeartbeatSubject("web-1.dc"))
	if !ok || node != "web-1.dc" {
		t.Errorf("NodeFromSubject = %q, %t", node, ok)
	}
	if _, ok := NodeFromSubject("flotilla.v1.admin.nodes"); ok {
		t.Error("NodeFromSubject accepted an admin subject")
	}
	pub, sub := AgentPermissions("n1")
	if len(pub) != 1 || pub[0] != "flotilla.v1.from.n1.>" || len(sub) != 2 {
		t.Errorf("AgentPermissions = %v %v", pub, sub)
	}
}

func TestValidateNodeName(t *testing.T) {
	for name, ok := range map[string]bool{
		"web-1": true, "10.0.0.11": true, "a_b": true, "": false, "-x": false, ".x": false,
		"a b": false, "a*": false, "a>": false, "a~b": false, strings.Repeat("a", 129): false,
		"web1.example.com": true, "web1..example.com": false, "web1.example.com.": false, "a.": false, "a/b": false, "a=b": false,
	} {
		err := ValidateNodeName(name)
		if (err == nil) != ok {
			t.Errorf("ValidateNodeName(%q) = %v, want ok=%t", name, err, ok)
		}
		if err == nil && !kvKeyValid(name) {
			t.Errorf("node name %q is not a valid JetStream KV key", name)
		}
	}
}

// kvKeyValid is JetStream KV's key rule (nats.go jetstream keyValid): the
// controller stores each node under its name.
func kvKeyValid(key string) bool {
	if key == "" || key[0] == '.' || key[len(key)-1] == '.' || strings.Contains(key, "..") {
		return false
	}
	for _, r := range key {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-/_=.", r)) {
			return false
		}
	}
	return true
}

func TestCAHash(t *testing.T) {
	// sha256("abc"), what `printf abc | sha256sum` prints.
	const want = "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
	if got := CAHash([]byte("abc")); got != want {
		t.Errorf("CAHash = %s", got)
	}
	if got, err := ParseCAHash(strings.ToUpper(want[7:])); err != nil || got != want {
		t.Errorf("ParseCAHash(bare upper hex) = %q, %v", got, err)
	}
	for _, bad := range []string{"", "sha256:", "sha256:xyz", "sha256:abcd"} {
		if _, err := ParseCAHash(bad); err == nil {
			t.Errorf("ParseCAHash(%q) accepted", bad)
		}
	}
}

// FuzzOpenTask: whatever arrives on a task subject, the verifier returns an
// error or a valid task, and never panics.
func FuzzOpenTask(f *testing.F) {
	pub, priv := newKey(f)
	good, _ := Sign(priv, TypeTask, sampleTask(1, time.Now().Add(time.Hour)))
	f.Add(good)
	f.Add([]byte(`{"type":"task","body":"e30=","sig":""}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, data []byte) {
		v := NewVerifier(pub, "web-1.example", 0)
		task, err := v.OpenTask(data)
		if err == nil {
			if verr := task.Validate(); verr != nil {
				t.Fatalf("accepted an invalid task: %v", verr)
			}
		}
	})
}
