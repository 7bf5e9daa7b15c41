// Package testbin gives integration tests the path of a freshly built flotilla binary.
package testbin

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
)

var (
	once sync.Once
	path string
	err  error
)

// Path returns $FLOTILLA_BIN when set (make test sets it), otherwise builds
// ./cmd/flotilla once per test process into a temporary directory.
func Path() (string, error) {
	once.Do(func() {
		if p := os.Getenv("FLOTILLA_BIN"); p != "" {
			path, err = filepath.Abs(p)
			return
		}
		dir, e := os.MkdirTemp("", "flotilla-bin-")
		if e != nil {
			err = e
			return
		}
		path = filepath.Join(dir, "flotilla")
		cmd := exec.Command("go", "build", "-o", path, "./cmd/flotilla")
		cmd.Dir = moduleRoot()
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, e := cmd.CombinedOutput(); e != nil {
			err = fmt.Errorf("build flotilla: %w\n%s", e, out)
		}
	})
	return path, err
}

func moduleRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}
