// Command coat-sample is the lab's static sample workload: a pattern-verifying
// TCP echo server, a streaming client that measures stalls, and a control
// client. See internal/sample for details.
package main

import (
	"os"

	"github.com/coat-project/coat/internal/sample"
)

func main() {
	os.Exit(sample.Main(os.Args[1:], os.Stdout, os.Stderr))
}
