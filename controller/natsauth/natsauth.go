// Package natsauth is flotilla's side of NATS decentralized (JWT) auth for an
// existing NATS cluster: it creates an operator (with a signing key), a system
// account and flotilla's account (Init, for a new cluster or tests), writes
// the nats-server config that trusts them (resolver: MEMORY with the account
// JWTs preloaded), issues user JWTs (Issuer) with exactly the permissions the
// embedded server gives each user and a lifetime, and revokes users by
// pushing flotilla's account JWT with a revocation list to every server
// (Revoker, Revocations).
package natsauth

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nkeys"
)

// Files Init writes into its directory.
const (
	FileOperatorJWT     = "operator.jwt"
	FileAccountKey      = "account.nk"       // flotilla's account signing key (seed): --nats-account-key
	FileControllerCreds = "controller.creds" // the controller's own user: --nats-creds
	FileServerConf      = "auth.conf"        // include it in every nats-server config
	FileLeafCreds       = "leaf.creds"       // a site's leaf node dials the hub as this user
	// Revocation: the controller re-signs flotilla's account JWT (its base
	// claims in FileAccountJWT) with the operator signing key and publishes
	// it as the system account's user FileSysCreds.
	FileOperatorSigningKey = "operator-signing.nk" // --nats-operator-key, mode 0600
	FileAccountJWT         = "account.jwt"         // --nats-account-jwt
	FileSysCreds           = "sys.creds"           // --nats-sys-creds, mode 0600
	// FileLeafSysCreds: a site's leaf node dials the hub as this system
	// account user too (a second remote, account: the system account), so
	// that the revocations the controller pushes reach the site's server.
	FileLeafSysCreds = "leaf-sys.creds"
)

// Setup is what Init made.
type Setup struct {
	OperatorJWT string
	SysAccount  string // public key
	SysJWT      string
	Account     string // flotilla's account public key
	AccountJWT  string
	AccountSeed []byte
	// OperatorSigningSeed signs account JWTs (listed in the operator's
	// signing keys); SysCreds is the controller's user in the system account.
	OperatorSigningSeed []byte
	SysCreds            []byte
}

// Init creates an operator, a system account and a flotilla account with
// JetStream enabled, writes them and the controller's credentials into dir
// (secrets mode 0600) and returns them.
func Init(dir string) (*Setup, error) {
	op, err := nkeys.CreateOperator()
	if err != nil {
		return nil, err
	}
	opPub, _ := op.PublicKey()
	oc := jwt.NewOperatorClaims(opPub)
	oc.Name = "flotilla"
	opSK, err := nkeys.CreateOperator()
	if err != nil {
		return nil, err
	}
	opSKPub, _ := opSK.PublicKey()
	oc.SigningKeys.Add(opSKPub)
	sysKP, _ := nkeys.CreateAccount()
	sysPub, _ := sysKP.PublicKey()
	oc.SystemAccount = sysPub
	s := &Setup{SysAccount: sysPub}
	if s.OperatorSigningSeed, err = opSK.Seed(); err != nil {
		return nil, err
	}
	if s.OperatorJWT, err = oc.Encode(op); err != nil {
		return nil, fmt.Errorf("operator JWT: %w", err)
	}
	sc := jwt.NewAccountClaims(sysPub)
	sc.Name = "SYS"
	if s.SysJWT, err = sc.Encode(op); err != nil {
		return nil, fmt.Errorf("system account JWT: %w", err)
	}
	accKP, err := nkeys.CreateAccount()
	if err != nil {
		return nil, err
	}
	s.Account, _ = accKP.PublicKey()
	ac := jwt.NewAccountClaims(s.Account)
	ac.Name = "flotilla"
	ac.Limits.JetStreamLimits = jwt.JetStreamLimits{MemoryStorage: -1, DiskStorage: -1, Streams: -1, Consumer: -1, MaxAckPending: -1}
	if s.AccountJWT, err = ac.Encode(op); err != nil {
		return nil, fmt.Errorf("account JWT: %w", err)
	}
	if s.AccountSeed, err = accKP.Seed(); err != nil {
		return nil, err
	}
	iss, err := NewIssuer(s.AccountSeed, s.Account)
	if err != nil {
		return nil, err
	}
	ctrl, err := iss.User("flotilla-controller", nil, nil, false)
	if err != nil {
		return nil, err
	}
	leaf, err := iss.User("flotilla-leaf", nil, nil, false)
	if err != nil {
		return nil, err
	}
	sysSeed, err := sysKP.Seed()
	if err != nil {
		return nil, err
	}
	sysIss, err := NewIssuer(sysSeed, sysPub)
	if err != nil {
		return nil, err
	}
	pub, sub := SysUserPermissions(s.Account)
	if s.SysCreds, err = sysIss.User("flotilla-controller-sys", pub, sub, false); err != nil {
		return nil, err
	}
	pub, sub = LeafSysPermissions(s.Account)
	leafSys, err := sysIss.User("flotilla-leaf-sys", pub, sub, false)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	for name, f := range map[string]struct {
		data []byte
		mode os.FileMode
	}{
		FileOperatorJWT:        {[]byte(s.OperatorJWT), 0o644},
		FileAccountKey:         {s.AccountSeed, 0o600},
		FileControllerCreds:    {ctrl, 0o600},
		FileLeafCreds:          {leaf, 0o600},
		FileServerConf:         {[]byte(s.ServerConfig()), 0o644},
		FileOperatorSigningKey: {s.OperatorSigningSeed, 0o600},
		FileAccountJWT:         {[]byte(s.AccountJWT), 0o644},
		FileSysCreds:           {s.SysCreds, 0o600},
		FileLeafSysCreds:       {leafSys, 0o600},
	} {
		if err := os.WriteFile(filepath.Join(dir, name), f.data, f.mode); err != nil {
			return nil, fmt.Errorf("write %s: %w", name, err)
		}
	}
	return s, nil
}

// ServerConfig is the nats-server configuration block that trusts the
// operator and preloads both accounts (resolver: MEMORY).
func (s *Setup) ServerConfig() string {
	var b strings.Builder
	fmt.Fprintf(&b, "operator: %s\nsystem_account: %s\nresolver: MEMORY\nresolver_preload: {\n  %s: %s\n  %s: %s\n}\n",
		strconv.Quote(s.OperatorJWT), s.SysAccount, s.SysAccount, strconv.Quote(s.SysJWT), s.Account, strconv.Quote(s.AccountJWT))
	return b.String()
}

// Issuer signs user JWTs for one account.
type Issuer struct {
	kp      nkeys.KeyPair
	signer  string
	account string
}

// NewIssuer takes the account's key or one of its signing keys (seed) and the
// account's public key ("" when the seed is the account's own key).
func NewIssuer(seed []byte, account string) (*Issuer, error) {
	kp, err := nkeys.FromSeed(seed)
	if err != nil {
		return nil, fmt.Errorf("account signing key: %w", err)
	}
	pub, err := kp.PublicKey()
	if err != nil {
		return nil, err
	}
	if !nkeys.IsValidPublicAccountKey(pub) {
		return nil, errors.New("account signing key: not an account key (its seed starts with SA)")
	}
	if account == "" {
		account = pub
	}
	return &Issuer{kp: kp, signer: pub, account: account}, nil
}

// LoadIssuer reads a signing key seed file; the account is taken from the
// controller's own user JWT in credsFile (the account that issued it).
func LoadIssuer(seedFile, credsFile string) (*Issuer, error) {
	seed, err := os.ReadFile(seedFile)
	if err != nil {
		return nil, fmt.Errorf("account signing key: %w", err)
	}
	creds, err := os.ReadFile(credsFile)
	if err != nil {
		return nil, fmt.Errorf("NATS credentials: %w", err)
	}
	tok, err := jwt.ParseDecoratedJWT(creds)
	if err != nil {
		return nil, fmt.Errorf("NATS credentials %s: %w", credsFile, err)
	}
	uc, err := jwt.DecodeUserClaims(tok)
	if err != nil {
		return nil, fmt.Errorf("NATS credentials %s: %w", credsFile, err)
	}
	acc := uc.IssuerAccount
	if acc == "" {
		acc = uc.Issuer
	}
	return NewIssuer([]byte(strings.TrimSpace(string(seed))), acc)
}

// Account is the public key of the account users are issued in.
func (i *Issuer) Account() string { return i.account }

// UserSpec says what a user may do and for how long.
type UserSpec struct {
	Name string
	// Pub and Sub are the subjects the user may publish and subscribe to
	// (both nil: everything).
	Pub, Sub []string
	// Respond lets the user answer one reply within a minute on any subject.
	Respond bool
	// TTL is the JWT's lifetime (0: it never expires).
	TTL time.Duration
}

// User issues a user named name allowed to publish on pub and subscribe to
// sub (both nil: everything) and, with respond, to answer one reply within
// a minute on any subject; it returns a .creds file (JWT and seed). The JWT
// never expires: Init uses it for the controller's own users.
func (i *Issuer) User(name string, pub, sub []string, respond bool) ([]byte, error) {
	jwtStr, seed, _, err := i.UserJWT(name, pub, sub, respond)
	if err != nil {
		return nil, err
	}
	return jwt.FormatUserConfig(jwtStr, []byte(seed))
}

// UserJWT is User as the JWT, the user's seed and its public key (the name
// nats-server logs the user by).
func (i *Issuer) UserJWT(name string, pub, sub []string, respond bool) (token, seed, userKey string, err error) {
	return i.NewUser(UserSpec{Name: name, Pub: pub, Sub: sub, Respond: respond})
}

// NewUser creates a user key and issues its JWT: the JWT, the key's seed and
// its public key.
func (i *Issuer) NewUser(spec UserSpec) (token, seed, userKey string, err error) {
	ukp, err := nkeys.CreateUser()
	if err != nil {
		return "", "", "", err
	}
	upub, _ := ukp.PublicKey()
	if token, err = i.SignUser(upub, spec); err != nil {
		return "", "", "", err
	}
	sb, err := ukp.Seed()
	if err != nil {
		return "", "", "", err
	}
	return token, string(sb), upub, nil
}

// SignUser issues a JWT for an existing user key (a renewal: the holder of
// the key's seed keeps it, only the JWT is new).
func (i *Issuer) SignUser(userKey string, spec UserSpec) (string, error) {
	if !nkeys.IsValidPublicUserKey(userKey) {
		return "", fmt.Errorf("user JWT %s: %q is not a user public key", spec.Name, userKey)
	}
	if spec.TTL < 0 {
		return "", fmt.Errorf("user JWT %s: negative lifetime %s", spec.Name, spec.TTL)
	}
	uc := jwt.NewUserClaims(userKey)
	uc.Name = spec.Name
	if i.signer != i.account {
		uc.IssuerAccount = i.account
	}
	if spec.Pub != nil || spec.Sub != nil {
		uc.Pub.Allow.Add(spec.Pub...)
		uc.Sub.Allow.Add(spec.Sub...)
	}
	if spec.Respond {
		uc.Resp = &jwt.ResponsePermission{MaxMsgs: 1, Expires: time.Minute}
	}
	if spec.TTL > 0 {
		uc.Expires = time.Now().Add(spec.TTL).Unix()
	}
	token, err := uc.Encode(i.kp)
	if err != nil {
		return "", fmt.Errorf("user JWT %s: %w", spec.Name, err)
	}
	return token, nil
}
