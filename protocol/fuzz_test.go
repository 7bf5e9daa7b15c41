package protocol

import (
	"strings"
	"testing"
	"time"
)

// Fuzz targets for every decoder the controller runs on bytes from a node.
// Each must never panic, and whatever it accepts must satisfy the checks
// the controller relies on afterwards.

func FuzzDecodeEvent(f *testing.F) {
	for _, ev := range []*Event{
		{Type: EventOutput, Task: "t1", Node: "n1", N: 1, Stream: "stdout", Line: "hello"},
		{Type: EventProgress, Task: "t1", Node: "n1", N: 2, Progress: &Progress{Done: 1, Total: 2, Message: "m"}},
		{Type: EventStepResult, Task: "t1", Node: "n1", N: 3, Result: &StepResult{ExitCode: 2, Error: "e"}},
		{Type: EventTaskResult, Task: "t1", Node: "n1", N: 4, Step: -1, Final: &TaskResult{OK: true, FailedStep: -1}},
	} {
		data, _ := Encode(ev)
		f.Add(data)
	}
	f.Add([]byte(`{"type":"output","task":"t1","node":"n2"}`))
	f.Add([]byte(`{"type":"task.result","task":"t1","node":"n1","final":null} trailing`))
	f.Add([]byte("\x00"))
	f.Add([]byte(`{"type":"output","task":"t1","node":"n1","Node":"n2","n":1}`))
	f.Add([]byte(`{"type":"step.result","task":"t1","node":"n1","result":{"exitCode":0,"exitCode":1}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		ev, err := DecodeEvent(data, "n1", "t1")
		if err != nil {
			return
		}
		sameAsEncodingJSON(t, data, ev)
		if ev.Node != "n1" || ev.Task != "t1" || len(ev.Line) > MaxEventLine || ev.Step < -1 {
			t.Fatalf("accepted an event outside the rules: %+v", ev)
		}
		if ev.Type == EventTaskResult && ev.Final == nil || ev.Type == EventStepResult && ev.Result == nil {
			t.Fatalf("accepted a result event without its result: %+v", ev)
		}
		if _, err := Encode(ev); err != nil {
			t.Fatalf("accepted event does not encode again: %v", err)
		}
	})
}

func FuzzDecodeHeartbeat(f *testing.F) {
	data, _ := Encode(&Heartbeat{Name: "n1", Time: time.Unix(1, 0).UTC(), Interval: time.Second, Running: 1})
	f.Add(data)
	f.Add([]byte(`{"name":"n1","interval":-1}`))
	f.Add([]byte(`{"name":"n2","interval":1000000000}`))
	f.Add([]byte(`{"name":"n1","name":"n2","interval":1000000000}`))
	f.Add([]byte(`{"name":"n1","interval":1000000000,"\u0130nterval":1}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		hb, err := DecodeHeartbeat(data, "n1")
		if err != nil {
			return
		}
		sameAsEncodingJSON(t, data, hb)
		if hb.Name != "n1" || ValidateHeartbeatInterval(hb.Interval) != nil || hb.Running < 0 {
			t.Fatalf("accepted a heartbeat outside the rules: %+v", hb)
		}
	})
}

func FuzzDecodeTaskAck(f *testing.F) {
	for _, a := range []*TaskAck{{Accepted: true}, {Error: "refused"}, {Error: "expired", ClockSkew: time.Hour}} {
		data, _ := Encode(a)
		f.Add(data)
	}
	f.Add([]byte(`{"accepted":true,"error":"both"}`))
	f.Add([]byte(`{"accepted":false,"error":"no","ACCEPTED":true}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		a, err := DecodeTaskAck(data)
		if err != nil {
			return
		}
		sameAsEncodingJSON(t, data, a)
		if a.Accepted == (a.Error != "") || len(a.Error) > MaxEventText {
			t.Fatalf("accepted an ack outside the rules: %+v", a)
		}
		_ = DescribeSkew(a.ClockSkew)
	})
}

// FuzzDecodeRegister covers the decoding of a registration and the checks of
// its name and heartbeat interval (the controller checks facts after this).
// FuzzRegisterNameSubject: a name the controller accepts survives its subjects.
func FuzzRegisterNameSubject(f *testing.F) {
	data, _ := Encode(&Register{Name: "n1", Facts: Facts{Hostname: "h", IPs: []string{"10.0.0.1"}, Arch: "amd64", OS: "linux",
		Labels: map[string]string{"rack": "r7"}}, HeartbeatInterval: time.Second, PeerURL: "https://10.0.0.1:9444"})
	f.Add(data)
	f.Add([]byte(`{"name":"../x","facts":{"ips":["fe80::1%x;touch${IFS}/PWNED;#"]}}`))
	f.Add([]byte(`{"name":"web1.example.com","heartbeatInterval":1000000000}`))
	f.Add([]byte(`{"name":"web1..example.com.","heartbeatInterval":1000000000}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		var reg Register
		if err := Decode(data, &reg); err != nil {
			return
		}
		if ValidateNodeName(reg.Name) != nil || ValidateHeartbeatInterval(reg.HeartbeatInterval) != nil {
			return
		}
		if NodeToken(reg.Name) == "" || len(reg.Name) > 128 {
			t.Fatalf("accepted name %q", reg.Name)
		}
		if got, ok := NodeFromSubject(RegisterSubject(reg.Name)); !ok || got != reg.Name {
			t.Fatalf("name %q does not survive its subject: %q, %t", reg.Name, got, ok)
		}
		if strings.Contains(NodeToken(reg.Name), ".") || !kvKeyValid(reg.Name) {
			t.Fatalf("name %q is not one subject token and a KV key", reg.Name)
		}
	})
}

// FuzzReplyInNodeInbox: whatever reply subject a node picks, the controller
// answers only inside that node's own inbox.
func FuzzReplyInNodeInbox(f *testing.F) {
	f.Add("n1", InboxPrefix("n1")+".abc")
	f.Add("n1", "$KV.flotilla_nodes.n1")
	f.Add("a.b", InboxPrefix("a.b2")+".x")
	f.Fuzz(func(t *testing.T, node, reply string) {
		if ValidateNodeName(node) != nil || !ReplyInNodeInbox(node, reply) {
			return
		}
		prefix := InboxPrefix(node) + "."
		if len(reply) <= len(prefix) || reply[:len(prefix)] != prefix {
			t.Fatalf("%q accepted as inside the inbox of %q", reply, node)
		}
	})
}

// FuzzDecodePeerCertRequest: a node's certificate request decodes as
// encoding/json reads it, or not at all.
func FuzzDecodePeerCertRequest(f *testing.F) {
	f.Add([]byte(`{"csr":"cGVt"}`))
	f.Add([]byte(`{"csr":"cGVt","CSR":"eHg="}`))
	f.Add([]byte(`{"csr":"cGVt"} {"csr":"eHg="}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := DecodePeerCertRequest(data)
		if err != nil {
			return
		}
		sameAsEncodingJSON(t, data, r)
	})
}

func FuzzDecodeNATSRenewRequest(f *testing.F) {
	ok := &NATSRenewRequest{Node: "n1", UserKey: "UDXU4RCSJNZOIQHZNWXHXORDPRTGNJAHAHFRGZNEEJCPQTT2M7NLCNF4",
		Nonce: strings.Repeat("A", NATSNonceLen), Sig: make([]byte, NATSSigLen)}
	data, _ := Encode(ok)
	if _, err := DecodeNATSRenewRequest(data); err != nil {
		f.Fatalf("the seed request is refused: %v", err)
	}
	f.Add(data)
	f.Add([]byte(`{"node":"n1","userKey":"U","nonce":"","sig":""}`))
	f.Add([]byte(`{"node":"n1;x","userKey":"UDXU","nonce":"x","sig":"AA=="} trailing`))
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := DecodeNATSRenewRequest(data)
		if err != nil {
			return
		}
		if ValidateNodeName(r.Node) != nil || ValidateNATSUserKey(r.UserKey) != nil || len(r.Nonce) != NATSNonceLen || len(r.Sig) != NATSSigLen {
			t.Fatalf("accepted a renewal request outside the rules: %+v", r)
		}
	})
}
