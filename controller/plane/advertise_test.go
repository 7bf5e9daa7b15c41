package plane

import (
	"strings"
	"testing"
)

func TestAdvertiseFor(t *testing.T) {
	for _, tt := range []struct {
		listen, httpListen, advertise string
		want, err                     string
	}{
		{listen: "127.0.0.1:4222", httpListen: "127.0.0.1:9443", want: "127.0.0.1"},
		{listen: "10.77.0.1:4222", httpListen: "0.0.0.0:9443", want: "10.77.0.1"},
		{listen: "0.0.0.0:4222", httpListen: "10.77.0.1:9443", want: "10.77.0.1"},
		{listen: "127.0.0.1:4222", httpListen: "127.0.0.1:9443", advertise: "127.0.0.1", want: "127.0.0.1"},
		{listen: "0.0.0.0:4222", httpListen: "0.0.0.0:9443", advertise: "192.0.2.7", want: "192.0.2.7"},
		{listen: "0.0.0.0:4222", httpListen: "0.0.0.0:9443", advertise: "ctl.example", want: "ctl.example"},
		{listen: "127.0.0.1:4222", httpListen: "127.0.0.1:9443", advertise: "10.0.0.1", err: "not the NATS listen address 127.0.0.1"},
		{listen: "0.0.0.0:4222", httpListen: "127.0.0.1:9443", advertise: "10.0.0.1", err: "not the HTTPS listen address 127.0.0.1"},
		{listen: "nope", httpListen: "0.0.0.0:9443", err: "listen address"},
	} {
		got, err := advertiseFor(tt.listen, tt.httpListen, tt.advertise)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("%+v: err %v, want %q", tt, err, tt.err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("%+v: got %q, %v; want %q", tt, got, err, tt.want)
		}
	}
	if got, err := advertiseFor("0.0.0.0:4222", "[::]:9443", ""); err != nil || got == "" {
		t.Errorf("wildcard listeners: %q %v", got, err)
	}
}
