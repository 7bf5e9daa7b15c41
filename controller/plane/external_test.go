package plane

import (
	"errors"
	"testing"
	"time"
)

func TestCheckExternalOptions(t *testing.T) {
	for _, tc := range []struct {
		name   string
		opts   Options
		option string // "" = valid
	}{
		{"embedded", Options{}, ""},
		{"external", Options{NATSURLs: []string{"nats://a:4222", "tls://b:4222"}, NATSCreds: "c", NATSAccountKey: "k"}, ""},
		{"creds without URLs", Options{NATSCreds: "c"}, "NATSURLs"},
		{"bad scheme", Options{NATSURLs: []string{"http://a:4222"}, NATSCreds: "c", NATSAccountKey: "k"}, "NATSURLs"},
		{"user in URL", Options{NATSURLs: []string{"nats://u:p@a:4222"}, NATSCreds: "c", NATSAccountKey: "k"}, "NATSURLs"},
		{"no host", Options{NATSURLs: []string{"nats://"}, NATSCreds: "c", NATSAccountKey: "k"}, "NATSURLs"},
		{"no creds", Options{NATSURLs: []string{"nats://a:4222"}, NATSAccountKey: "k"}, "NATSCreds"},
		{"no account key", Options{NATSURLs: []string{"nats://a:4222"}, NATSCreds: "c"}, "NATSAccountKey"},
		{"revocation files without URLs", Options{NATSOperatorKey: "o"}, "NATSURLs"},
		{"user lifetime without URLs", Options{NATSUserTTL: time.Hour}, "NATSUserTTL"},
		{"replicas too many", Options{Replicas: 6}, "Replicas"},
		{"replicas negative", Options{Replicas: -1}, "Replicas"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := checkExternal(&tc.opts)
			var oe *OptionError
			switch {
			case tc.option == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case tc.option != "" && (!errors.As(err, &oe) || oe.Option != tc.option):
				t.Fatalf("error %v, want an OptionError about %s", err, tc.option)
			}
		})
	}
}
