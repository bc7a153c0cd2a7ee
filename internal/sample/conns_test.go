package sample

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"strings"
	"testing"
	"time"
)

func TestConnsAllSurvive(t *testing.T) {
	_, addr, _ := startServer(t)
	opened := -1
	rep := Conns(context.Background(), ConnsOptions{Addr: addr, Conns: 50, Interval: 20 * time.Millisecond,
		Duration: 200 * time.Millisecond, Ready: func(n int) { opened = n }})
	if !rep.OK() || opened != 50 || rep.Sent == 0 || rep.Sent != rep.Received || len(rep.StallsMs) != 50 {
		t.Fatalf("report %+v (ready said %d)", rep, opened)
	}
	if rep.StallP50Ms > rep.StallP99Ms || rep.StallP99Ms > rep.MaxStallMs {
		t.Errorf("stall percentiles out of order: %+v", rep)
	}
}

func TestConnsReportsLostConnections(t *testing.T) {
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
			c.Close() // every connection dies at once
		}
	}()
	rep := Conns(context.Background(), ConnsOptions{Addr: ln.Addr().String(), Conns: 5, Interval: 10 * time.Millisecond,
		Duration: 100 * time.Millisecond})
	if rep.OK() || rep.Survived != 0 || rep.Failures != 5 || rep.FirstError == "" {
		t.Fatalf("lost connections not reported: %+v", rep)
	}
}

func TestMainConnsJSON(t *testing.T) {
	_, addr, _ := startServer(t)
	var out, errOut bytes.Buffer
	code := Main([]string{"conns", "--addr", addr, "--conns", "10", "--interval", "20ms", "--duration", "100ms", "--json"}, &out, &errOut)
	if code != 0 {
		t.Fatalf("exit %d: %s %s", code, out.String(), errOut.String())
	}
	var m map[string]any
	if err := json.Unmarshal(out.Bytes(), &m); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"conns", "opened", "survived", "max_stall_ms", "stall_p99_ms", "stalls_ms", "first_error"} {
		if _, ok := m[k]; !ok {
			t.Errorf("report lacks %q", k)
		}
	}
	if !strings.HasPrefix(errOut.String(), "ready 10") {
		t.Errorf("stderr %q", errOut.String())
	}
}
