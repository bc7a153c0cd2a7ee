package sample

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeRedis serves SET and GET from a map over RESP. With corrupt set,
// every GET reply has its first byte flipped.
type fakeRedis struct {
	mu      sync.Mutex
	data    map[string][]byte
	corrupt bool
}

func startFakeRedis(t *testing.T, f *fakeRedis) string {
	t.Helper()
	f.data = map[string][]byte{}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go f.serve(c)
		}
	}()
	return ln.Addr().String()
}

func (f *fakeRedis) serve(c net.Conn) {
	defer c.Close()
	r := bufio.NewReader(c)
	w := bufio.NewWriter(c)
	for {
		args, err := readCommand(r)
		if err != nil {
			return
		}
		f.mu.Lock()
		switch strings.ToUpper(string(args[0])) {
		case "SET":
			f.data[string(args[1])] = args[2]
			w.WriteString("+OK\r\n")
		case "GET":
			v, ok := f.data[string(args[1])]
			if !ok {
				w.WriteString("$-1\r\n")
				break
			}
			v = bytes.Clone(v)
			if f.corrupt && len(v) > 0 {
				v[0] ^= 0xff
			}
			fmt.Fprintf(w, "$%d\r\n%s\r\n", len(v), v)
		default:
			w.WriteString("-ERR unknown command\r\n")
		}
		f.mu.Unlock()
		if r.Buffered() == 0 {
			if err := w.Flush(); err != nil {
				return
			}
		}
	}
}

func readCommand(r *bufio.Reader) ([][]byte, error) {
	line, err := r.ReadString('\n')
	if err != nil {
		return nil, err
	}
	n, err := strconv.Atoi(strings.TrimSpace(line[1:]))
	if err != nil || line[0] != '*' {
		return nil, fmt.Errorf("bad command %q", line)
	}
	args := make([][]byte, n)
	for i := range args {
		line, err := r.ReadString('\n')
		if err != nil {
			return nil, err
		}
		l, _ := strconv.Atoi(strings.TrimSpace(line[1:]))
		b := make([]byte, l+2)
		if _, err := io.ReadFull(r, b); err != nil {
			return nil, err
		}
		args[i] = b[:l]
	}
	return args, nil
}

func TestRedisValueDeterministicAndDistinct(t *testing.T) {
	a, b, c := make([]byte, 4096), make([]byte, 4096), make([]byte, 4096)
	RedisValue(a, 1, 7, 0)
	RedisValue(b, 1, 7, 0)
	RedisValue(c, 1, 7, 1)
	if !bytes.Equal(a, b) {
		t.Error("same (seed, key, version) gave different values")
	}
	if bytes.Equal(a, c) {
		t.Error("versions 0 and 1 have the same value")
	}
	RedisValue(c, 2, 7, 0)
	if bytes.Equal(a, c) {
		t.Error("seeds 1 and 2 have the same value")
	}
}

func TestRedisLoadFillAndCheck(t *testing.T) {
	f := &fakeRedis{}
	addr := startFakeRedis(t, f)
	opts := RedisLoadOptions{Addr: addr, Size: 64 << 10, ValueSize: 4 << 10, Seed: 3, Fill: true, Load: true,
		Duration: 200 * time.Millisecond, Rate: 0, Conns: 2}
	var tl bytes.Buffer
	opts.Timeline = &tl
	rep := RedisLoad(context.Background(), opts)
	if !rep.OK() || rep.Keys != 16 || rep.FillBytes != 64<<10 || rep.Requests == 0 || rep.Gets == 0 || rep.Sets == 0 {
		t.Fatalf("report %+v", rep)
	}
	if rep.P50Ms > rep.P99Ms || rep.P99Ms > rep.MaxStallMs {
		t.Errorf("percentiles out of order: %+v", rep)
	}
	lines := strings.Split(strings.TrimSpace(tl.String()), "\n")
	if lines[0] != "t_ms,latency_ms,op,conn" || int64(len(lines)-1) != rep.Requests {
		t.Errorf("timeline has %d rows for %d requests; header %q", len(lines)-1, rep.Requests, lines[0])
	}
	// A second run on the same data, without filling: version 0 is there.
	opts.Fill, opts.Timeline = false, nil
	f.mu.Lock()
	for k := range 16 {
		v := make([]byte, 4<<10)
		RedisValue(v, 3, k, 0)
		f.data[RedisKey(k)] = v
	}
	f.mu.Unlock()
	if rep := RedisLoad(context.Background(), opts); !rep.OK() || rep.FillBytes != 0 {
		t.Fatalf("load without fill: %+v", rep)
	}
}

func TestRedisLoadDetectsWrongValues(t *testing.T) {
	f := &fakeRedis{corrupt: true}
	addr := startFakeRedis(t, f)
	rep := RedisLoad(context.Background(), RedisLoadOptions{Addr: addr, Size: 8 << 10, ValueSize: 1 << 10,
		Fill: true, Load: true, Duration: 100 * time.Millisecond})
	if rep.OK() || rep.Errors == 0 || !strings.Contains(rep.FirstError, "GET coat:") {
		t.Fatalf("corrupt values not detected: %+v", rep)
	}
}

func TestRedisLoadDetectsMissingKeys(t *testing.T) {
	addr := startFakeRedis(t, &fakeRedis{})
	rep := RedisLoad(context.Background(), RedisLoadOptions{Addr: addr, Size: 8 << 10, ValueSize: 1 << 10,
		Load: true, Duration: 100 * time.Millisecond})
	if rep.OK() || !strings.Contains(rep.FirstError, "missing") {
		t.Fatalf("missing keys not detected: %+v", rep)
	}
}

func TestRedisLoadConnectionLoss(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			c.Close()
		}
	}()
	rep := RedisLoad(context.Background(), RedisLoadOptions{Addr: ln.Addr().String(), Size: 1 << 10, ValueSize: 1 << 10,
		Load: true, Duration: time.Second})
	if rep.OK() || rep.ConnectionError == "" {
		t.Fatalf("connection loss not reported: %+v", rep)
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{"65536": 65536, "64KiB": 64 << 10, "256MiB": 256 << 20, "1GiB": 1 << 30, "1gib": 1 << 30} {
		if got, err := ParseSize(in); err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	if _, err := ParseSize("lots"); err == nil {
		t.Error("ParseSize(lots) did not fail")
	}
}

func TestMainRedisLoadJSON(t *testing.T) {
	addr := startFakeRedis(t, &fakeRedis{})
	tl := filepath.Join(t.TempDir(), "tl.csv")
	var out, errOut bytes.Buffer
	code := Main([]string{"redis-load", "--addr", addr, "--fill", "32KiB", "--value-size", "4KiB",
		"--duration", "150ms", "--rate", "500", "--json", "--timeline", tl}, &out, &errOut)
	if code != 0 {
		t.Fatalf("exit %d, stdout %q, stderr %q", code, out.String(), errOut.String())
	}
	var m map[string]any
	if err := json.Unmarshal(out.Bytes(), &m); err != nil {
		t.Fatalf("report %q: %v", out.String(), err)
	}
	for _, k := range []string{"keys", "fill_bytes", "fill_ms", "requests", "errors", "first_error",
		"connection_error", "p50_ms", "p99_ms", "max_stall_ms", "duration_ms"} {
		if _, ok := m[k]; !ok {
			t.Errorf("report lacks %q", k)
		}
	}
	if errOut.String() != "ready\n" {
		t.Errorf("stderr %q, want ready", errOut.String())
	}
	if b, err := os.ReadFile(tl); err != nil || !strings.HasPrefix(string(b), "t_ms,latency_ms,op,conn\n") {
		t.Errorf("timeline %q, %v", b, err)
	}
	if code := Main([]string{"redis-load", "--addr", addr, "--no-fill", "--fill-only"}, &out, &errOut); code != 2 {
		t.Errorf("--no-fill --fill-only: exit %d, want 2", code)
	}
}

// TestRedisLoadRealRedis runs the client against Debian's redis-server,
// when installed.
func TestRedisLoadRealRedis(t *testing.T) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Skip("redis-server not installed")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	cmd := exec.Command(bin, "--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", t.TempDir())
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	for i := 0; ; i++ {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
			break
		}
		if i > 100 {
			t.Fatalf("redis-server does not listen: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	rep := RedisLoad(context.Background(), RedisLoadOptions{Addr: addr, Size: 4 << 20, Seed: 9, Fill: true, Load: true,
		Duration: 300 * time.Millisecond, Conns: 2})
	if !rep.OK() || rep.Keys != 64 || rep.Requests == 0 {
		t.Fatalf("against redis-server: %+v", rep)
	}
}

func TestMainRedisLoadStateAcrossRuns(t *testing.T) {
	addr := startFakeRedis(t, &fakeRedis{})
	state := filepath.Join(t.TempDir(), "state.json")
	run := func(args ...string) {
		t.Helper()
		var out, errOut bytes.Buffer
		base := []string{"redis-load", "--addr", addr, "--fill", "16KiB", "--value-size", "1KiB", "--rate", "0", "--state", state, "--json"}
		if code := Main(append(base, args...), &out, &errOut); code != 0 {
			t.Fatalf("%v: exit %d: %s %s", args, code, out.String(), errOut.String())
		}
	}
	run("--fill-only")
	run("--no-fill", "--duration", "100ms")
	// Values SET by the first load are what the second one expects.
	run("--no-fill", "--duration", "100ms")
	b, err := os.ReadFile(state)
	if err != nil || !strings.Contains(string(b), `"versions":[`) {
		t.Fatalf("state %s, %v", b, err)
	}
	var out, errOut bytes.Buffer
	if code := Main([]string{"redis-load", "--addr", addr, "--fill", "32KiB", "--value-size", "1KiB", "--no-fill", "--state", state}, &out, &errOut); code != 1 || !strings.Contains(errOut.String(), "another data set") {
		t.Errorf("mismatched state: exit %d, %s", code, errOut.String())
	}
}

// --check-all reads every key once: all intact passes, one flipped byte
// fails and names the key.
func TestRedisCheckAll(t *testing.T) {
	f := &fakeRedis{}
	addr := startFakeRedis(t, f)
	opts := RedisLoadOptions{Addr: addr, Size: 64 << 10, ValueSize: 4 << 10, Seed: 5, Fill: true}
	if rep := RedisLoad(context.Background(), opts); !rep.OK() {
		t.Fatalf("fill: %+v", rep)
	}
	opts.Fill, opts.CheckAll = false, true
	if rep := RedisLoad(context.Background(), opts); !rep.OK() || rep.Requests != 16 {
		t.Fatalf("check of an intact data set: %+v", rep)
	}
	f.mu.Lock()
	f.data[RedisKey(7)][100] ^= 1
	f.mu.Unlock()
	if rep := RedisLoad(context.Background(), opts); rep.OK() || rep.Errors != 1 || !strings.Contains(rep.FirstError, RedisKey(7)) {
		t.Fatalf("a flipped byte was not found: %+v", rep)
	}
}
