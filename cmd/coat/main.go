// Command coat is COAT's CLI, agent and lab in one binary.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/coat-project/coat/internal/cli"
	"github.com/coat-project/coat/internal/runtime"
)

func main() {
	if runtime.IsInit() { // we are a container's init: exec its command
		os.Exit(runtime.RunInit())
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cli.Main(ctx, os.Args[1:])
	stop()
	os.Exit(code)
}
