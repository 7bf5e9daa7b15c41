// Package clustertest runs flotilla on an existing NATS cluster as processes:
// three real nats-server processes in cluster mode with JetStream (built from
// the nats-server module at test time, see internal/natstest), decentralized
// JWT auth made by `flotilla nats-auth init`, a controller with --nats-url,
// and agents that fail over between the servers.
package clustertest
