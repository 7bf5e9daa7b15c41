package protocol

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestClockSkewWindow(t *testing.T) {
	pub, priv := newKey(t)
	issued := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	expires := issued.Add(5 * time.Minute)
	task := sampleTask(1, expires)
	task.Issued = issued
	data, err := Sign(priv, TypeTask, task)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name    string
		skew    time.Duration // Verifier.MaxClockSkew
		now     time.Time
		want    error
		ahead   bool   // the error must say the node is ahead (else behind)
		wantMsg string // part of the error text
	}{
		{"at issue time", 0, issued, nil, false, ""},
		{"just before expiry", 0, expires.Add(-time.Nanosecond), nil, false, ""},
		{"behind by exactly the default allowance", 0, issued.Add(-DefaultMaxClockSkew), nil, false, ""},
		{"behind by one ns more than allowed", 0, issued.Add(-DefaultMaxClockSkew - time.Nanosecond), ErrNotYetValid, false, "30s behind the controller's"},
		{"ahead past expiry within the allowance", 0, expires.Add(DefaultMaxClockSkew - time.Nanosecond), nil, false, ""},
		{"ahead past expiry by exactly the allowance", 0, expires.Add(DefaultMaxClockSkew), ErrExpired, true, "5m30s ahead of the controller's"},
		{"an hour behind", 0, issued.Add(-time.Hour), ErrNotYetValid, false, "1h0m0s behind"},
		{"configured 2m: 90s behind is fine", 2 * time.Minute, issued.Add(-90 * time.Second), nil, false, ""},
		{"configured 2m: 121s behind", 2 * time.Minute, issued.Add(-121 * time.Second), ErrNotYetValid, false, "2m1s behind"},
		{"no allowance: 1ns before issue", -1, issued.Add(-time.Nanosecond), ErrNotYetValid, false, "allowed 0s"},
		{"no allowance: at expiry", -1, expires, ErrExpired, true, "ahead of"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			v := NewVerifier(pub, "web-1.example", 0)
			v.MaxClockSkew = tc.skew
			v.Now = func() time.Time { return tc.now }
			_, err := v.OpenTask(data)
			if !errors.Is(err, tc.want) {
				t.Fatalf("OpenTask at %s: %v, want %v", tc.now, err, tc.want)
			}
			if tc.want == nil {
				return
			}
			var ce *ClockError
			if !errors.As(err, &ce) {
				t.Fatalf("error %v is not a *ClockError", err)
			}
			if got := ce.Skew; got != tc.now.Sub(issued) || (got > 0) != tc.ahead {
				t.Errorf("Skew = %s, want %s", got, tc.now.Sub(issued))
			}
			if !strings.Contains(err.Error(), tc.wantMsg) || !strings.Contains(err.Error(), "node time") {
				t.Errorf("error %q lacks %q and the node time", err, tc.wantMsg)
			}
			if v.LastSeq() != 0 {
				t.Errorf("a task refused for its time moved LastSeq to %d", v.LastSeq())
			}
		})
	}
}

func TestCancelClockSkew(t *testing.T) {
	pub, priv := newKey(t)
	exp := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	data, _ := Sign(priv, TypeCancel, &Cancel{TaskID: "t", Node: "n1", Seq: 1, Expires: exp})
	for _, tc := range []struct {
		now  time.Time
		want error
	}{{exp.Add(29 * time.Second), nil}, {exp.Add(30 * time.Second), ErrExpired}} {
		v := NewVerifier(pub, "n1", 0)
		v.Now = func() time.Time { return tc.now }
		if _, err := v.OpenCancel(data); !errors.Is(err, tc.want) {
			t.Errorf("cancel at expiry%+v: %v, want %v", tc.now.Sub(exp), err, tc.want)
		}
	}
}

func TestDescribeSkew(t *testing.T) {
	for d, want := range map[time.Duration]string{
		412 * time.Second:       "node clock is 6m52s ahead of the controller's",
		-45 * time.Second:       "node clock is 45s behind the controller's",
		1400 * time.Millisecond: "node clock is 1s ahead of the controller's",
	} {
		if got := DescribeSkew(d); got != want {
			t.Errorf("DescribeSkew(%s) = %q, want %q", d, got, want)
		}
	}
}

func TestReplyInNodeInbox(t *testing.T) {
	in := InboxPrefix("web-1.dc")
	for reply, want := range map[string]bool{
		in + ".abc.1":                           true,
		in + ".x":                               true,
		in:                                      false,
		in + ".":                                false,
		in + "x.abc":                            false, // another node whose name starts with ours
		InboxPrefix("web-1.dc2") + ".abc":       false,
		InboxPrefix("web-2") + ".abc":           false,
		"$KV.flotilla_nodes.web-1~dc":           false,
		"$JS.API.STREAM.DELETE.FLOTILLA_EVENTS": false,
		"_INBOX.abc":                            false,
		TaskSubject("web-2"):                    false,
		in + ".*":                               false,
		in + ".>":                               false,
		in + ".a..b":                            false,
		in + ".a b":                             false,
		"":                                      false,
	} {
		if got := ReplyInNodeInbox("web-1.dc", reply); got != want {
			t.Errorf("ReplyInNodeInbox(web-1.dc, %q) = %t, want %t", reply, got, want)
		}
	}
}

func TestTaskFromEventsSubject(t *testing.T) {
	for subj, want := range map[string]string{
		EventsSubject("a.b", "t-1"):       "t-1",
		EventsSubject("a", "t") + ".more": "",
		HeartbeatSubject("a"):             "",
		"flotilla.v1.from.a.events.":      "",
		"other.subject":                   "",
	} {
		got, ok := TaskFromEventsSubject(subj)
		if got != want || ok != (want != "") {
			t.Errorf("TaskFromEventsSubject(%q) = %q, %t; want %q", subj, got, ok, want)
		}
	}
}

func TestEventValidate(t *testing.T) {
	good := func() *Event {
		return &Event{Type: EventOutput, Task: "t1", Node: "n1", N: 1, Step: 0, Stream: "stdout", Line: "hi"}
	}
	cases := []struct {
		name string
		mod  func(*Event)
		want string // "" = valid
	}{
		{"good", func(*Event) {}, ""},
		{"task result", func(e *Event) { e.Type, e.Step, e.Final = EventTaskResult, -1, &TaskResult{OK: true, FailedStep: -1} }, ""},
		{"another node's name", func(e *Event) { e.Node = "n2" }, `names node "n2" but came from node "n1"`},
		{"another task", func(e *Event) { e.Task = "t2" }, `names task "t2"`},
		{"no type", func(e *Event) { e.Type = "" }, "event type"},
		{"type with a newline", func(e *Event) { e.Type = "output\n" }, "event type"},
		{"step below -1", func(e *Event) { e.Step = -2 }, "event step -2"},
		{"step too high", func(e *Event) { e.Step = MaxSteps }, "event step"},
		{"unknown stream", func(e *Event) { e.Stream = "stdin" }, "event stream"},
		{"line too long", func(e *Event) { e.Line = strings.Repeat("x", MaxEventLine+1) }, "event line"},
		{"negative progress", func(e *Event) { e.Progress = &Progress{Done: -1} }, "negative"},
		{"step result missing", func(e *Event) { e.Type = EventStepResult }, "without a result"},
		{"final missing", func(e *Event) { e.Type = EventTaskResult }, "without a final result"},
		{"huge error", func(e *Event) {
			e.Type, e.Result = EventStepResult, &StepResult{Error: strings.Repeat("e", MaxEventText+1)}
		}, "step result error"},
		{"bad failed step", func(e *Event) { e.Type, e.Final = EventTaskResult, &TaskResult{FailedStep: -5} }, "failed step"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ev := good()
			tc.mod(ev)
			err := ev.Validate("n1", "t1")
			if (err == nil) != (tc.want == "") || err != nil && !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Validate = %v, want %q", err, tc.want)
			}
		})
	}
}

func TestHeartbeatAndAckValidate(t *testing.T) {
	hb := func(name string, iv time.Duration, running int) error {
		return (&Heartbeat{Name: name, Interval: iv, Running: running}).Validate("n1")
	}
	for _, tc := range []struct {
		err  error
		want string
	}{
		{hb("n1", time.Second, 0), ""},
		{hb("n1", MinHeartbeatInterval, 0), ""},
		{hb("n1", MaxHeartbeatInterval, 3), ""},
		{hb("n2", time.Second, 0), `names node "n2"`},
		{hb("n1", 0, 0), "heartbeat interval"},
		{hb("n1", 1000*time.Hour, 0), "heartbeat interval"},
		{hb("n1", time.Second, -1), "running"},
		{(&TaskAck{Accepted: true}).Validate(), ""},
		{(&TaskAck{Error: "no", ClockSkew: time.Hour}).Validate(), ""},
		{(&TaskAck{}).Validate(), "without a reason"},
		{(&TaskAck{Accepted: true, Error: "x"}).Validate(), "both"},
		{(&TaskAck{Error: strings.Repeat("x", MaxEventText+1)}).Validate(), "ack error"},
	} {
		if (tc.err == nil) != (tc.want == "") || tc.err != nil && !strings.Contains(tc.err.Error(), tc.want) {
			t.Errorf("got %v, want %q", tc.err, tc.want)
		}
	}
}
