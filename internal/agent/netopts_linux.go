package agent

import (
	"net"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// stallTimeout is how long a connection between agents may hold data its
// peer does not acknowledge (a partition, a peer that stopped reading)
// before the kernel drops it: a transfer that moves no byte for this long
// counts as a lost peer, and the migration rolls back. Idle connections
// are probed by keepalive (tunnel.go) within the same bound.
const stallTimeout = 10 * time.Second

// userTimeout sets TCP_USER_TIMEOUT on a socket (net.Dialer.Control and
// net.ListenConfig.Control): peerDialer (authz.go) and the listener.
func userTimeout(_, _ string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, int(stallTimeout/time.Millisecond))
	})
	if err != nil {
		return err
	}
	return serr
}

// listenConfig is the agent API's listener: accepted connections get the
// same bounds (a source lost mid-stream ends the destination's read).
func listenConfig() *net.ListenConfig {
	return &net.ListenConfig{KeepAliveConfig: keepalive, Control: userTimeout}
}
