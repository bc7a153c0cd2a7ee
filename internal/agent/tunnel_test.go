package agent

import (
	"encoding/binary"
	"net"
	"testing"
)

// The page server's connection closes in order only after the daemon's
// close request crossed it whole; anything else ends in a reset.
func TestResetOnEndTracksCloseRequest(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				buf := make([]byte, 4096)
				for {
					if _, err := c.Read(buf); err != nil {
						c.Close()
						return
					}
				}
			}()
		}
	}()
	req := func(cmd uint32) []byte {
		b := make([]byte, psIovSize)
		binary.LittleEndian.PutUint32(b, cmd)
		return b
	}
	dial := func() *resetOnEnd {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return &resetOnEnd{TCPConn: c.(*net.TCPConn)}
	}
	c := dial()
	stream := append(append(req(7), req(7)...), req(psIovClose)...)
	// In uneven pieces, as a TLS record boundary would cut them.
	for _, cut := range [][2]int{{0, 5}, {5, 40}, {40, 90}, {90, len(stream)}} {
		if _, err := c.Write(stream[cut[0]:cut[1]]); err != nil {
			t.Fatal(err)
		}
	}
	if !c.closed || c.n != 0 {
		t.Fatalf("close request not seen: closed=%v n=%d", c.closed, c.n)
	}
	c = dial()
	c.Write(append(req(psIovClose), req(7)...))
	if c.closed {
		t.Fatal("a request after the close was missed")
	}
	c = dial()
	c.Write(req(psIovClose)[:20])
	if c.closed {
		t.Fatal("half a close request taken for a whole one")
	}
}
