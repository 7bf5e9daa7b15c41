// Package fleettest boots a sandbox fleet for a test and removes it when the test ends.
package fleettest

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/flotilla-dev/flotilla/sandbox"
)

// Require skips the test when the machine cannot run a fleet, or fails it in
// CI (CI=true), where the fleet's prerequisites must be installed.
func Require(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("sandbox fleet tests do not run with -short")
	}
	if err := sandbox.CheckHost(""); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("sandbox fleet prerequisite missing: %v", err)
		}
		t.Skipf("sandbox fleet prerequisite missing: %v", err)
	}
}

// New boots a fleet for the test (after Require) and closes it in t.Cleanup,
// also when the test fails.
func New(t testing.TB, o sandbox.Options) *sandbox.Fleet {
	t.Helper()
	Require(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	f, err := sandbox.New(ctx, o)
	if err != nil {
		t.Fatalf("boot fleet %s: %v", o.Name, err)
	}
	t.Cleanup(func() {
		if err := f.Close(); err != nil {
			t.Errorf("remove fleet %s: %v", o.Name, err)
		}
	})
	return f
}
