// Command unixpair is the workload of e2e's TestUnixSocketPairInContainer:
// UNIX sockets whose files live in the container's writable layer, used
// by a client inside the same container across migrations.
//
//   - /tmp/pair.sock: a listening stream socket; every connection gets one
//     reply line per request line, echoed back, but for "status": the
//     reply reports the pair's health and the server then closes the
//     connection (so that a client outside the container, which CRIU
//     cannot move, is gone as soon as it has read the reply).
//   - /tmp/pair.dgram: a bound datagram socket that echoes each datagram
//     to its sender.
//   - the client, in this process: one stream connection to pair.sock,
//     opened once and never reopened, and a datagram socket bound to
//     /tmp/client.dgram and connected to pair.dgram. Every 20 ms it sends a
//     numbered request on each and checks the reply.
//
// The status line: "stream=N dgram=M errors=E first_error=..." (N, M the
// round trips done; E the failures, the client stops at the first).
package main

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"time"
)

const (
	streamPath = "/tmp/pair.sock"
	dgramPath  = "/tmp/pair.dgram"
	clientPath = "/tmp/client.dgram"
)

var (
	mu             sync.Mutex
	streamN, dgram int
	errs           int
	firstErr       string
)

func fail(err error) {
	mu.Lock()
	defer mu.Unlock()
	errs++
	if firstErr == "" {
		firstErr = err.Error()
	}
}

func status() string {
	mu.Lock()
	defer mu.Unlock()
	return fmt.Sprintf("stream=%d dgram=%d errors=%d first_error=%s", streamN, dgram, errs, strings.ReplaceAll(firstErr, " ", "_"))
}

func main() {
	if err := os.MkdirAll("/tmp", 0o1777); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	for _, p := range []string{streamPath, dgramPath, clientPath} {
		os.Remove(p)
	}
	ln, err := net.Listen("unix", streamPath)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	srv, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: dgramPath, Net: "unixgram"})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	go func() {
		buf := make([]byte, 512)
		for {
			n, from, err := srv.ReadFromUnix(buf)
			if err != nil {
				fail(fmt.Errorf("dgram server: %w", err))
				return
			}
			if from != nil {
				srv.WriteToUnix(buf[:n], from)
			}
		}
	}()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				fail(fmt.Errorf("accept: %w", err))
				return
			}
			go serve(c)
		}
	}()
	fmt.Println("ready")
	client()
	select {}
}

func serve(c net.Conn) {
	defer c.Close()
	sc := bufio.NewScanner(c)
	for sc.Scan() {
		if sc.Text() == "status" {
			fmt.Fprintln(c, status())
			return
		}
		if _, err := fmt.Fprintln(c, sc.Text()); err != nil {
			return
		}
	}
}

// client runs the in-container pair until its first failure.
func client() {
	sc, err := net.Dial("unix", streamPath)
	if err != nil {
		fail(fmt.Errorf("dial stream: %w", err))
		return
	}
	dc, err := net.DialUnix("unixgram", &net.UnixAddr{Name: clientPath, Net: "unixgram"}, &net.UnixAddr{Name: dgramPath, Net: "unixgram"})
	if err != nil {
		fail(fmt.Errorf("dial dgram: %w", err))
		return
	}
	r := bufio.NewReader(sc)
	buf := make([]byte, 512)
	for i := 0; ; i++ {
		time.Sleep(20 * time.Millisecond)
		req := fmt.Sprintf("req-%d", i)
		if _, err := fmt.Fprintln(sc, req); err != nil {
			fail(fmt.Errorf("stream write: %w", err))
			return
		}
		line, err := r.ReadString('\n')
		if err != nil || strings.TrimSpace(line) != req {
			fail(fmt.Errorf("stream reply %q to %s: %v", line, req, err))
			return
		}
		if _, err := dc.Write([]byte(req)); err != nil {
			fail(fmt.Errorf("dgram write: %w", err))
			return
		}
		// A lost datagram would show as a stall here: a migration
		// takes well under 30 s.
		dc.SetReadDeadline(time.Now().Add(30 * time.Second))
		n, err := dc.Read(buf)
		if err != nil || string(buf[:n]) != req {
			fail(fmt.Errorf("dgram reply %q to %s: %v", buf[:n], req, err))
			return
		}
		mu.Lock()
		streamN++
		dgram++
		mu.Unlock()
	}
}
