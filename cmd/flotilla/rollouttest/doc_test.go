// Package rollouttest runs the flotilla binary's rollout commands (plan, apply, status,
// delete) as processes: against a controller whose rollout handlers replay scripted
// answers (the CLI's side of the contract: streaming, summary, exit codes, Ctrl-C), and
// against a real controller with five agents applying examples/hello.
package rollouttest
