package main

// The agent binary runs rollout steps: register the layer, file, run, service
// and undo executors.
import _ "github.com/flotilla-dev/flotilla/agent/rollout"
