package plane

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/flotilla-dev/flotilla/internal/atomicfile"
	"github.com/flotilla-dev/flotilla/protocol"
	"github.com/nats-io/nats-server/v2/server"
)

// NATS user names.
const (
	userController = "flotilla-controller"
	// UserAdmin is the CLI's user; it may only send admin requests.
	UserAdmin = "flotilla-admin"
	// agentUserPrefix + node name is an agent's user.
	agentUserPrefix = "node/"
)

// AgentUser is the NATS user name of a node.
func AgentUser(node string) string { return agentUserPrefix + node }

// authenticator decides who may connect to the embedded NATS and with which permissions.
type authenticator struct {
	c      *Controller
	global *server.Account
	mu     sync.RWMutex
	agents map[string][]byte // node -> sha256(password)
}

func (a *authenticator) setAgent(node string, hash []byte) {
	a.mu.Lock()
	a.agents[node] = hash
	a.mu.Unlock()
}

func hashSecret(s string) []byte {
	h := sha256.Sum256([]byte(s))
	return h[:]
}

func (a *authenticator) Check(ca server.ClientAuthentication) bool {
	o := ca.GetOpts()
	switch {
	case o.Username == userController:
		if subtle.ConstantTimeCompare([]byte(o.Password), []byte(a.c.internalPass)) != 1 {
			return false
		}
		ca.RegisterUser(&server.User{Username: o.Username, Account: a.global})
		return true
	case o.Username == UserAdmin:
		if subtle.ConstantTimeCompare([]byte(o.Password), []byte(a.c.adminPass)) != 1 {
			a.c.log.Warn("admin connection refused: wrong password", "remote", ca.RemoteAddress())
			return false
		}
		ca.RegisterUser(&server.User{Username: o.Username, Account: a.global, Permissions: &server.Permissions{
			Publish:   &server.SubjectPermission{Allow: []string{protocol.AllAdmin}},
			Subscribe: &server.SubjectPermission{Allow: []string{"_INBOX.>"}},
		}})
		return true
	case strings.HasPrefix(o.Username, agentUserPrefix):
		node := strings.TrimPrefix(o.Username, agentUserPrefix)
		a.mu.RLock()
		want, ok := a.agents[node]
		a.mu.RUnlock()
		if !ok || subtle.ConstantTimeCompare(hashSecret(o.Password), want) != 1 {
			a.c.log.Warn("agent connection refused: unknown node or wrong credentials", "node", node, "remote", ca.RemoteAddress())
			return false
		}
		if ip := sourceIP(ca.RemoteAddress().String()); ip != "" {
			a.c.conns.set(node, ip)
		}
		pub, sub := protocol.AgentPermissions(node)
		ca.RegisterUser(&server.User{Username: o.Username, Account: a.global, Permissions: &server.Permissions{
			Publish:   &server.SubjectPermission{Allow: pub},
			Subscribe: &server.SubjectPermission{Allow: sub},
			Response:  &server.ResponsePermission{MaxMsgs: 1, Expires: time.Minute},
		}})
		return true
	}
	a.c.log.Warn("NATS connection refused: no or unknown user", "remote", ca.RemoteAddress())
	return false
}

// loadAdminPassword reads the admin password from the credential file, or makes one.
func (c *Controller) loadAdminPassword() (string, error) {
	path := c.AdminCredsPath()
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return randomSecret(), nil
	}
	if err != nil {
		return "", fmt.Errorf("read admin credentials: %w", err)
	}
	var cr protocol.Credentials
	if err := json.Unmarshal(data, &cr); err != nil || cr.Password == "" {
		return "", fmt.Errorf("%s: not a flotilla credential file (remove it to create a new one): %v", path, err)
	}
	return cr.Password, nil
}

// writeAdminCreds (re)writes the admin credential file with the current URL and CA.
func (c *Controller) writeAdminCreds() error {
	if c.issuer != nil {
		return c.writeExternalAdminCreds()
	}
	cr := protocol.Credentials{
		NATSURLs:   []string{c.NATSURL(), "tls://" + localNATSHostPort(c)},
		User:       UserAdmin,
		Password:   c.adminPass,
		CAPEM:      c.pki.caPEM,
		SigningKey: c.SigningKey(),
		HTTPURL:    c.HTTPURL(),
	}
	data, err := json.MarshalIndent(cr, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.Write(filepath.Join(c.opts.DataDir, FileAdminCreds), data, 0o600)
}

func localNATSHostPort(c *Controller) string {
	return fmt.Sprintf("127.0.0.1:%d", addrPort(c.natsAddr))
}
