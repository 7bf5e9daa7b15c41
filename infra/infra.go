// Package infra creates and destroys the machines a Clusterfile asks for by count
// (spec.infra), so that `flotilla apply` works from "3 masters and 2 nodes" and
// not only from hosts that already run an agent.
//
// A Driver keeps one record per machine in the controller's JetStream KV
// (bucket flotilla_infra), written before every provider call, so that an apply
// interrupted anywhere (controller killed between "created" and "joined")
// resumes on the next apply without a duplicate or a leaked machine. Each
// machine boots with the bootstrap one-liner as its first-boot user data and a
// join token of its own (one use, for its name only, short-lived), the Driver
// waits until its agent is online, and revokes the token. Every provider call
// is bounded (a timeout, a limit on calls in flight) and retried with
// exponential back-off and jitter unless the error is Permanent.
//
// # What a provider implements
//
// A provider is three calls on the infrastructure's API, each idempotent and safe
// to retry after a timeout whose outcome is unknown:
//
//   - Create(ctx, spec) makes one machine named spec.Name, tagged with the
//     cluster (spec.Cluster) and role, with spec.CPUs and spec.MemoryBytes when
//     set, that runs spec.UserData as a shell script (root) at its first boot,
//     and returns it once it is booting. Idempotent on (cluster, name): if a
//     machine with that name and cluster tag exists, it returns it and creates
//     nothing. On a cloud: look up by tag first, then create with the API's
//     idempotency token derived from cluster and name (EC2 RunInstances
//     ClientToken, Aliyun ECS ClientToken), so that a retried call whose first
//     attempt succeeded unseen returns the same instance.
//   - List(ctx, cluster) returns every machine carrying the cluster tag,
//     whatever its state short of terminated (a DescribeInstances filter on the
//     tag). The Driver uses it to adopt machines it has no record of and to
//     find machines that vanished.
//   - Destroy(ctx, m) terminates the machine and everything created with it
//     (its disks, its address); a machine that is gone already is success.
//
// Errors that retrying cannot fix (quota exhausted, an invalid instance type,
// a name the infrastructure refuses) should be wrapped with Permanent; anything
// else is retried. A provider needs no state of its own: the tag on the machine
// and the Driver's records are the state.
//
// The first provider is infra/sandbox: systemd-nspawn nodes on the
// controller's host (sandbox/). No cloud provider ships yet, because none can
// be tested against a real API here.
package infra

import (
	"context"
	"errors"
	"time"
)

// Provider creates, lists and destroys machines on one infrastructure (see the
// package doc for what each call must guarantee).
type Provider interface {
	Create(ctx context.Context, spec MachineSpec) (Machine, error)
	List(ctx context.Context, cluster string) ([]Machine, error)
	Destroy(ctx context.Context, m Machine) error
}

// MachineSpec is one machine to create.
type MachineSpec struct {
	Name    string // host name and agent name: <cluster>-<role>-<i>
	Cluster string // the cluster tag
	Role    string
	// CPUs and MemoryBytes: 0 means the provider's default.
	CPUs        float64
	MemoryBytes int64
	// UserData is the first-boot script: the bootstrap one-liner with the
	// machine's own join token. It holds a secret: never log it.
	UserData []byte
}

// Machine is one machine as the provider knows it.
type Machine struct {
	Name    string `json:"name"`
	Cluster string `json:"cluster"`
	Role    string `json:"role,omitempty"`
	ID      string `json:"id,omitempty"` // the provider's id (instance id)
	IP      string `json:"ip,omitempty"`
}

// ClusterTag is the tag key (label, instance tag) that marks a machine as a
// cluster's; RoleTag the role it was created for.
const (
	ClusterTag = "flotilla.dev/cluster"
	RoleTag    = "flotilla.dev/role"
)

// permanent marks an error that retrying cannot fix.
type permanent struct{ err error }

func (p permanent) Error() string { return p.err.Error() }
func (p permanent) Unwrap() error { return p.err }

// Permanent wraps err so that the Driver does not retry it.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return permanent{err}
}

// IsPermanent reports whether err (or an error it wraps) is Permanent.
func IsPermanent(err error) bool {
	var p permanent
	return errors.As(err, &p)
}

// Defaults of Options.
const (
	DefaultMaxConcurrent = 4
	DefaultCallTimeout   = 3 * time.Minute
	DefaultJoinTimeout   = 3 * time.Minute
	DefaultTokenTTL      = 30 * time.Minute
)
