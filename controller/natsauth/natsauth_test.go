package natsauth

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nats-io/jwt/v2"
)

func TestInitAndIssue(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "auth")
	s, err := Init(dir)
	if err != nil {
		t.Fatal(err)
	}
	for name, mode := range map[string]os.FileMode{FileAccountKey: 0o600, FileControllerCreds: 0o600, FileServerConf: 0o644, FileOperatorJWT: 0o644} {
		st, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != mode {
			t.Errorf("%s: mode %v, want %v", name, st.Mode().Perm(), mode)
		}
	}
	conf := s.ServerConfig()
	for _, want := range []string{"resolver: MEMORY", s.Account, s.SysAccount, "system_account: " + s.SysAccount} {
		if !strings.Contains(conf, want) {
			t.Errorf("server config lacks %q", want)
		}
	}
	ac, err := jwt.DecodeAccountClaims(s.AccountJWT)
	if err != nil {
		t.Fatal(err)
	}
	if !ac.Limits.JetStreamLimits.IsUnlimited() && ac.Limits.JetStreamLimits.DiskStorage == 0 {
		t.Errorf("account has JetStream disabled: %+v", ac.Limits.JetStreamLimits)
	}
	iss, err := LoadIssuer(filepath.Join(dir, FileAccountKey), filepath.Join(dir, FileControllerCreds))
	if err != nil {
		t.Fatal(err)
	}
	if iss.Account() != s.Account {
		t.Fatalf("issuer account %s, want %s", iss.Account(), s.Account)
	}
	tok, seed, key, err := iss.UserJWT("node/n1", []string{"flotilla.from.n1.>"}, []string{"flotilla.to.n1.>"}, true)
	if err != nil {
		t.Fatal(err)
	}
	uc, err := jwt.DecodeUserClaims(tok)
	if err != nil {
		t.Fatal(err)
	}
	if uc.Subject != key || uc.Name != "node/n1" || !strings.HasPrefix(seed, "SU") {
		t.Errorf("user claims %+v, key %s", uc, key)
	}
	if got := uc.Pub.Allow; len(got) != 1 || got[0] != "flotilla.from.n1.>" {
		t.Errorf("publish allow %v", got)
	}
	if got := uc.Sub.Allow; len(got) != 1 || got[0] != "flotilla.to.n1.>" {
		t.Errorf("subscribe allow %v", got)
	}
	if uc.Resp == nil || uc.Resp.MaxMsgs != 1 {
		t.Errorf("response permission %+v", uc.Resp)
	}
}

func TestIssuerRefusesNonAccountKey(t *testing.T) {
	for _, seed := range []string{"", "garbage", "SUAIBDPBAUTWCWBKIO6XHQNINK5FWJW4OHLXC3HQ2KFE4PEJUA44CNHTC4"} {
		if _, err := NewIssuer([]byte(seed), ""); err == nil {
			t.Errorf("seed %q accepted as an account signing key", seed)
		}
	}
}
