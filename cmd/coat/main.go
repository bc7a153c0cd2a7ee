// Command coat is COAT's CLI, agent and lab in one binary.
package main

import (
	"context"
	"os"
	"os/signal"
	goruntime "runtime"
	"syscall"

	"github.com/coat-project/coat/internal/cli"
	"github.com/coat-project/coat/internal/runtime"
)

// The main goroutine keeps the main thread for itself. The agent runs CRIU
// from threads that leave the host's mount namespace for good (see
// internal/runtime/criucache_linux.go); Go discards such a thread when its
// goroutine ends, except the main thread, which it parks instead, and whose
// namespace /proc/self then shows. Locked here, the main thread never runs
// such a goroutine.
func init() { goruntime.LockOSThread() }

func main() {
	if runtime.IsInit() { // we are a container's init: exec its command
		os.Exit(runtime.RunInit())
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cli.Main(ctx, os.Args[1:])
	stop()
	os.Exit(code)
}
