package e2e

import (
	"context"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Bad input gets a clear error and a non-zero exit, and changes nothing.
func TestBadInputChangesNothing(t *testing.T) {
	l := newLab(t, 2)
	c := l.runSample("bad", "edge-1")
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"unknown container", []string{"migrate", "nosuch", "--to", "edge-2"}, "unknown container"},
		{"unknown host", []string{"migrate", "bad", "--to", "edge-9"}, "unknown host"},
		{"same host", []string{"migrate", "bad", "--to", "edge-1"}, "already runs on edge-1"},
		{"taken name", []string{"run", "--host", "edge-2", "--name", "bad", "--image", "sample", "--", "/bin/coat-sample", "server"}, "already exists"},
		{"taken ip", []string{"run", "--host", "edge-2", "--name", "other", "--ip", c.IP, "--image", "sample", "--", "/bin/coat-sample", "server"}, "ip " + c.IP},
		{"unknown image", []string{"run", "--host", "edge-1", "--name", "x1", "--image", "nosuch", "--", "/bin/true"}, "unknown image"},
		{"invalid name", []string{"run", "--host", "edge-1", "--name", "Bad_Name!", "--image", "sample", "--", "/bin/true"}, "invalid name"},
		{"ip outside subnet", []string{"run", "--host", "edge-1", "--name", "x2", "--ip", "192.0.2.77", "--image", "sample", "--", "/bin/true"}, "outside the overlay subnet"},
		{"run on unknown host", []string{"run", "--host", "edge-7", "--name", "x3", "--image", "sample", "--", "/bin/true"}, "unknown host"},
		{"rm unknown", []string{"rm", "nosuch"}, "unknown container"},
		{"logs unknown", []string{"logs", "nosuch"}, "unknown container"},
		{"no command", []string{"run", "--host", "edge-1", "--name", "x4", "--image", "sample"}, "no command"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := l.must("ps", "--json")
			out, err := l.coat(tc.args...)
			if err == nil {
				t.Fatalf("coat %s succeeded:\n%s", strings.Join(tc.args, " "), out)
			}
			if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() == 0 {
				t.Fatalf("want a non-zero exit, got %v", err)
			}
			if !strings.Contains(out, tc.want) {
				t.Errorf("error %q does not say %q", strings.TrimSpace(out), tc.want)
			}
			if after := l.must("ps", "--json"); after != before {
				t.Fatalf("state changed:\nbefore %s\nafter %s", before, after)
			}
		})
	}
	// A second migration of a container that is migrating is refused.
	t.Run("migrating twice", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		first := exec.CommandContext(ctx, filepath.Join(binDir, "coat"), "migrate", "bad", "--to", "edge-2", "--json")
		first.Env = append(first.Environ(), "COAT_LAB="+l.name)
		if err := first.Start(); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(10 * time.Second)
		for l.get("bad").Status != "migrating" {
			if time.Now().After(deadline) {
				t.Fatal("first migration never showed as migrating")
			}
			time.Sleep(5 * time.Millisecond)
		}
		out, err := l.coat("migrate", "bad", "--to", "edge-2")
		if err == nil || !strings.Contains(out, "already migrating") {
			t.Errorf("second migration: err=%v out=%s", err, out)
		}
		if err := first.Wait(); err != nil {
			t.Fatalf("first migration failed: %v", err)
		}
		if got := l.get("bad"); got.Host != "edge-2" || got.Status != "running" {
			t.Fatalf("after first migration: %+v", got)
		}
	})
}
