package doctor

import (
	"context"
	"os"
	"os/exec"
	"time"
)

// runTimeout bounds each command a check runs (criu check takes about a
// second; a hung binary must not hang the doctor).
const runTimeout = 30 * time.Second

// System is the Env of the machine the process runs on.
type System struct{}

var _ Env = System{}

// Run runs name with args and returns its combined output.
func (System) Run(ctx context.Context, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, runTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// ReadFile reads a file.
func (System) ReadFile(path string) ([]byte, error) { return os.ReadFile(path) }

// Euid is the effective user id.
func (System) Euid() int { return os.Geteuid() }

// LookPath finds an executable on PATH.
func (System) LookPath(file string) (string, error) { return exec.LookPath(file) }
