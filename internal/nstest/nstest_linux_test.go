//go:build linux

package nstest

import (
	"io"
	"net"
	"os"
	"testing"
	"time"
)

func TestNewNetNSUniqueAndCleaned(t *testing.T) {
	RequireRoot(t)
	var paths []string
	t.Run("make", func(t *testing.T) {
		a, b := NewNetNS(t, "nst-"), NewNetNS(t, "nst-")
		if a == b {
			t.Fatalf("same path twice: %s", a)
		}
		paths = []string{a, b}
	})
	for _, p := range paths {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s still exists after cleanup: %v", p, err)
		}
	}
}

func TestVethListenDial(t *testing.T) {
	RequireRoot(t)
	t.Parallel()
	a, b := NewNetNS(t, "nst-a-"), NewNetNS(t, "nst-b-")
	Veth(t,
		VethEnd{NetNS: a, Name: "va", Addr: &net.IPNet{IP: net.IPv4(10, 77, 0, 1), Mask: net.CIDRMask(24, 32)}},
		VethEnd{NetNS: b, Name: "vb", Addr: &net.IPNet{IP: net.IPv4(10, 77, 0, 2), Mask: net.CIDRMask(24, 32)}})
	l := Listen(t, b, "tcp", "10.77.0.2:0")
	served := make(chan struct{})
	go func() {
		defer close(served)
		if c, err := l.Accept(); err == nil {
			_, _ = io.WriteString(c, "hi")
			c.Close()
		}
	}()
	defer func() { l.Close(); <-served }()
	c, err := Dial(a, "tcp", l.Addr().String(), 3*time.Second)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer c.Close()
	got, err := io.ReadAll(c)
	if err != nil || string(got) != "hi" {
		t.Fatalf("read %q, %v; want hi", got, err)
	}
	// The dialing goroutine's namespace must not leak into this one.
	if _, err := net.Dial("tcp", l.Addr().String()); err == nil {
		t.Fatal("10.77.0.2 reachable from the test's own netns")
	}
}
