package protocol

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"
)

// TestDecodeStrictRefusesAmbiguousMessages: every decoder of what a node sends
// refuses a key given twice (also in another letter case, also as encoding/json
// folds it), unknown fields, trailing data, oversized messages and deep nesting.
func TestDecodeStrictRefusesAmbiguousMessages(t *testing.T) {
	decoders := map[string]func([]byte) error{
		"register":  func(b []byte) error { _, err := DecodeRegister(b); return err },
		"join":      func(b []byte) error { _, err := DecodeJoinRequest(b); return err },
		"heartbeat": func(b []byte) error { _, err := DecodeHeartbeat(b, "n1"); return err },
		"event":     func(b []byte) error { _, err := DecodeEvent(b, "n1", "t1"); return err },
		"ack":       func(b []byte) error { _, err := DecodeTaskAck(b); return err },
		"peer-cert": func(b []byte) error { _, err := DecodePeerCertRequest(b); return err },
	}
	good := map[string]string{
		"register":  `{"name":"n1","facts":{"arch":"amd64","labels":{"rack":"r1"}},"heartbeatInterval":1000000000}`,
		"join":      `{"token":"0123abcd.00","name":"n1","facts":{"arch":"amd64"}}`,
		"heartbeat": `{"name":"n1","interval":1000000000,"running":0}`,
		"event":     `{"type":"output","task":"t1","node":"n1","n":1,"stream":"stdout","line":"x"}`,
		"ack":       `{"accepted":true}`,
		"peer-cert": `{"csr":"cGVt"}`,
	}
	bad := map[string][]struct{ name, body, want string }{
		"register": {
			{"name twice", `{"name":"n1","name":"n2","facts":{},"heartbeatInterval":1000000000}`, "twice"},
			{"facts twice", `{"name":"n1","facts":{"labels":{"rack":"r1"}},"facts":{"labels":{"role":"master"}},"heartbeatInterval":1000000000}`, "twice"},
			{"label twice", `{"name":"n1","facts":{"labels":{"role":"worker","role":"master"}},"heartbeatInterval":1000000000}`, "twice"},
			{"name in another case", `{"name":"n1","Name":"n2","facts":{},"heartbeatInterval":1000000000}`, "twice"},
			{"kelvin sign", `{"name":"n1","facts":{"kernel":"a","\u212aernel":"b"},"heartbeatInterval":1000000000}`, "twice"},
			{"long s", `{"name":"n1","facts":{"hostname":"a","ho\u017ftname":"b"},"heartbeatInterval":1000000000}`, "twice"},
			{"too big", `{"name":"n1","facts":{"kernel":"` + strings.Repeat("k", MaxRegisterBytes) + `"}}`, "at most"},
			{"too deep", `{"name":` + strings.Repeat("[", 20) + strings.Repeat("]", 20) + `}`, "deeper"},
		},
		"join": {
			{"name twice", `{"token":"0123abcd.00","name":"n1","name":"n2","facts":{}}`, "twice"},
		},
		"heartbeat": {
			{"name twice", `{"name":"n1","NAME":"n2","interval":1000000000}`, "twice"},
			{"unknown field", `{"name":"n1","interval":1000000000,"cpu":9}`, "unknown field"},
			{"trailing", `{"name":"n1","interval":1000000000} {}`, "trailing"},
			{"too big", `{"name":"n1","interval":1000000000,"running":0` + strings.Repeat(" ", MaxHeartbeatBytes) + `}`, "at most"},
		},
		"event": {
			{"node twice", `{"type":"output","task":"t1","node":"n1","node":"n2","n":1}`, "twice"},
			{"result twice", `{"type":"step.result","task":"t1","node":"n1","result":{"exitCode":0},"result":{"exitCode":1}}`, "twice"},
			{"unknown field", `{"type":"output","task":"t1","node":"n1","from":"n2"}`, "unknown field"},
		},
		"ack": {
			{"accepted twice", `{"accepted":false,"error":"no","accepted":true}`, "twice"},
			{"unknown field", `{"accepted":true,"by":"n2"}`, "unknown field"},
		},
		"peer-cert": {
			{"csr twice", `{"csr":"cGVt","csr":"eHg="}`, "twice"},
			{"trailing", `{"csr":"cGVt"}x`, "trailing"},
			{"no csr", `{}`, "without a CSR"},
		},
	}
	for kind, decode := range decoders {
		if err := decode([]byte(good[kind])); err != nil {
			t.Errorf("%s: good message refused: %v", kind, err)
		}
		for _, tc := range bad[kind] {
			if err := decode([]byte(tc.body)); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("%s, %s: %v, want an error saying %q", kind, tc.name, err, tc.want)
			}
		}
	}
}

// sameAsEncodingJSON fails when what a strict decoder accepted reads
// differently with encoding/json: whoever reads a node's message sees what
// the controller validated.
func sameAsEncodingJSON[T any](t *testing.T, data []byte, got *T) {
	t.Helper()
	var want T
	if err := json.Unmarshal(data, &want); err != nil {
		t.Fatalf("accepted %q that encoding/json refuses: %v", data, err)
	}
	if !reflect.DeepEqual(*got, want) {
		t.Fatalf("%q: strict decoder %+v, encoding/json %+v", data, *got, want)
	}
}

func TestLabelKeysDifferInMoreThanCase(t *testing.T) {
	if err := ValidateLabels("labels", map[string]string{"rack": "r1", "Rack": "r2"}); err == nil || !strings.Contains(err.Error(), "letter case") {
		t.Errorf("labels rack and Rack: %v, want a refusal about letter case", err)
	}
	data, _ := json.Marshal(Register{Name: "n1", HeartbeatInterval: time.Second, Facts: Facts{Labels: map[string]string{"rack": "r1", "zone": "z"}}})
	if _, err := DecodeRegister(data); err != nil {
		t.Errorf("distinct label keys refused: %v", err)
	}
}
