// Package doctor checks, and explains in plain words, what live migration
// needs on this machine: root, CRIU >= 4.2, runc, kernel features and the
// tools the lab and benchmarks use.
//
// Every check reads the machine through Env, so tests run unprivileged
// against a fake machine.
package doctor

import (
	"context"
	"fmt"
	"io"
	"strings"
)

// Status is a check's outcome.
type Status string

// Check outcomes. Only required checks fail; optional ones warn.
const (
	OK   Status = "ok"
	Warn Status = "warn"
	Fail Status = "fail"
)

// Result is one check's outcome. Hint says what a warning or failure
// means and what to do about it.
type Result struct {
	Name   string `json:"name"`
	Status Status `json:"status"`
	Detail string `json:"detail"`
	Hint   string `json:"hint"`
}

// Env is the machine the checks look at.
type Env interface {
	// Run runs a command and returns its combined stdout and stderr.
	Run(ctx context.Context, name string, args ...string) (string, error)
	ReadFile(path string) ([]byte, error)
	Euid() int
	LookPath(file string) (string, error)
}

// Check runs every check against env, in the order they are printed.
func Check(ctx context.Context, env Env) []Result {
	var rs []Result
	rs = append(rs, checkRoot(env))
	rs = append(rs, checkCRIU(ctx, env)...)
	rs = append(rs, checkRunc(ctx, env))
	rs = append(rs, checkKernel(ctx, env)...)
	rs = append(rs, checkTools(env)...)
	return rs
}

// Failed counts the failed (required) checks.
func Failed(rs []Result) int {
	n := 0
	for _, r := range rs {
		if r.Status == Fail {
			n++
		}
	}
	return n
}

// Print writes one line per check and, after a warning or failure, an
// indented line explaining it.
func Print(w io.Writer, rs []Result) error {
	width := 0
	for _, r := range rs {
		width = max(width, len(r.Name))
	}
	for _, r := range rs {
		tag := map[Status]string{OK: "[ ok ]", Warn: "[warn]", Fail: "[FAIL]"}[r.Status]
		line := strings.TrimRight(fmt.Sprintf("%s %-*s  %s", tag, width, r.Name, r.Detail), " ")
		if _, err := fmt.Fprintln(w, line); err != nil {
			return err
		}
		if r.Status != OK && r.Hint != "" {
			if _, err := fmt.Fprintf(w, "%*s%s\n", len(tag)+1, "", r.Hint); err != nil {
				return err
			}
		}
	}
	return nil
}

func ok(name, detail string) Result { return Result{Name: name, Status: OK, Detail: detail} }

func warn(name, detail, hint string) Result {
	return Result{Name: name, Status: Warn, Detail: detail, Hint: hint}
}

func fail(name, detail, hint string) Result {
	return Result{Name: name, Status: Fail, Detail: detail, Hint: hint}
}

// firstLine is s's first non-empty line, trimmed.
func firstLine(s string) string {
	for l := range strings.Lines(s) {
		if l = strings.TrimSpace(l); l != "" {
			return l
		}
	}
	return ""
}

// lastLine is s's last non-empty line, trimmed.
func lastLine(s string) string {
	ls := strings.Split(strings.TrimSpace(s), "\n")
	return strings.TrimSpace(ls[len(ls)-1])
}
