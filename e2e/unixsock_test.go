package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/coat-project/coat/internal/images"
)

// UNIX socket files in a container's writable layer: redis-server with
// --unixsocket /tmp/redis.sock (in the overlay upper layer, as PostgreSQL,
// MySQL and php-fpm do) migrates with its socket working on the
// destination, and its TCP clients keep their connections.

const redisSock = "/tmp/redis.sock"

// runRedisUnix starts redis-server on TCP port 6379 and on the UNIX socket
// /tmp/redis.sock (mode 0770), and waits until both answer.
func (l *testLab) runRedisUnix(name, host string) container {
	l.t.Helper()
	l.must("run", "--host", host, "--name", name, "--image", "redis", "--",
		"/usr/bin/redis-server", "--port", "6379", "--save", "", "--appendonly", "no", "--protected-mode", "no",
		"--unixsocket", redisSock, "--unixsocketperm", "770")
	l.waitListen(name, 6379)
	deadline := time.Now().Add(15 * time.Second)
	for {
		out, err := redisUnix(l.inContainer(name, redisSock), "PING")
		if err == nil && out == "PONG" {
			return l.get(name)
		}
		if time.Now().After(deadline) {
			l.t.Fatalf("redis in %s does not answer on %s: %q %v", name, redisSock, out, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// inContainer is the host path of path inside a container as its own
// processes see it (through its init's root, on whichever host it runs).
func (l *testLab) inContainer(name, path string) string {
	l.t.Helper()
	return fmt.Sprintf("/proc/%d/root%s", l.pid(name), path)
}

// redisUnix sends one command over a new connection to the UNIX socket
// at sock and returns the reply (a status, an integer or a bulk string;
// "(nil)" for a missing key).
func redisUnix(sock string, args ...string) (string, error) {
	c, err := net.DialTimeout("unix", sock, 5*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	return redisDo(c, bufio.NewReader(c), args...)
}

// redisDo sends one command on c and reads its reply from r.
func redisDo(c net.Conn, r *bufio.Reader, args ...string) (string, error) {
	if err := c.SetDeadline(time.Now().Add(5 * time.Second)); err != nil {
		return "", err
	}
	cmd := fmt.Sprintf("*%d\r\n", len(args))
	for _, a := range args {
		cmd += fmt.Sprintf("$%d\r\n%s\r\n", len(a), a)
	}
	if _, err := c.Write([]byte(cmd)); err != nil {
		return "", err
	}
	line, err := r.ReadString('\n')
	if err != nil {
		return "", err
	}
	line = strings.TrimSuffix(line, "\r\n")
	if line == "" {
		return "", fmt.Errorf("empty reply to %v", args)
	}
	switch line[0] {
	case '+', ':':
		return line[1:], nil
	case '-':
		return "", fmt.Errorf("redis: %s", line[1:])
	case '$':
		n, err := strconv.Atoi(line[1:])
		if err != nil {
			return "", fmt.Errorf("bad reply %q", line)
		}
		if n < 0 {
			return "(nil)", nil
		}
		b := make([]byte, n+2)
		if _, err := io.ReadFull(r, b); err != nil {
			return "", err
		}
		return string(b[:n]), nil
	}
	return "", fmt.Errorf("unexpected reply %q to %v", line, args)
}

// mustRedisUnix is redisUnix that fails the test on error or on a reply
// other than want.
func (l *testLab) mustRedisUnix(name, want string, args ...string) {
	l.t.Helper()
	got, err := redisUnix(l.inContainer(name, redisSock), args...)
	if err != nil || got != want {
		l.t.Fatalf("%s over %s in %s: %q, %v; want %q", strings.Join(args, " "), redisSock, name, got, err, want)
	}
}

// Stop-and-copy and then post-copy, each while a TCP client reads and
// writes: afterwards the socket file is there with its mode and owner, a new client
// of it gets every value set before (over the socket and over TCP), and
// the TCP client never lost its connection or a reply.
func TestUnixSocketMigrates(t *testing.T) {
	l := newLab(t, 2)
	c := l.runRedisUnix("ux", "edge-1")
	state := filepath.Join(t.TempDir(), "keys")
	if _, err := l.redisLoad(c.IP, state, "--fill", "16MiB", "--fill-only"); err != nil {
		t.Fatal(err)
	}
	l.mustRedisUnix("ux", "OK", "SET", "before", "set over the socket before any migration")
	// The socket file belongs to a service user, as PostgreSQL's does.
	if err := os.Lchown(l.inContainer("ux", redisSock), 999, 998); err != nil {
		t.Fatal(err)
	}
	var written []string
	for _, step := range []struct{ to, strategy string }{{"edge-2", "stop-and-copy"}, {"edge-1", "post-copy"}} {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		load := l.client(ctx, filepath.Join(binDir, "coat-sample"), "redis-load", "--addr", c.IP+":6379",
			"--fill", "16MiB", "--no-fill", "--state", state, "--duration", "4s", "--rate", "100", "--json")
		var loadOut strings.Builder
		load.Stdout = &loadOut
		if err := load.Start(); err != nil {
			cancel()
			t.Fatal(err)
		}
		time.Sleep(time.Second)
		r := l.migrateStrategy("ux", step.to, "--strategy", step.strategy)
		err := load.Wait()
		cancel()
		if r.Strategy != step.strategy {
			t.Errorf("migration ran %q, want %s", r.Strategy, step.strategy)
		}
		var lr loadReport
		if jerr := json.Unmarshal([]byte(loadOut.String()), &lr); err != nil || jerr != nil || !lr.ok() || lr.Requests == 0 {
			t.Fatalf("TCP client across the %s migration: %v %v %+v\n%s", step.strategy, err, jerr, lr, loadOut.String())
		}
		if got := l.get("ux"); got.Host != step.to || got.Status != "running" {
			t.Fatalf("after %s: %+v, want running on %s", step.strategy, got, step.to)
		}

		sock := l.inContainer("ux", redisSock)
		fi, err := os.Lstat(sock)
		if err != nil || fi.Mode() != fs.ModeSocket|0o770 {
			t.Fatalf("after %s: %s is %v (%v), want a socket of mode 0770", step.strategy, redisSock, fi.Mode(), err)
		}
		if st := fi.Sys().(*syscall.Stat_t); st.Uid != 999 || st.Gid != 998 {
			t.Errorf("after %s: %s is owned by %d:%d, want 999:998", step.strategy, redisSock, st.Uid, st.Gid)
		}
		l.mustRedisUnix("ux", "set over the socket before any migration", "GET", "before")
		for _, k := range written {
			l.mustRedisUnix("ux", "value of "+k, "GET", k)
		}
		k := "after-" + step.strategy
		l.mustRedisUnix("ux", "OK", "SET", k, "value of "+k)
		written = append(written, k)

		chk, err := l.redisLoad(c.IP, state, "--fill", "16MiB", "--no-fill", "--check-all")
		if err != nil || chk.Requests != 256 || chk.Errors != 0 {
			t.Fatalf("values over TCP after %s: %v %+v (want 256 intact)", step.strategy, err, chk)
		}
	}
}

// A client outside the container (here on the host, through the socket
// file in the container's rootfs) holds a connection: CRIU cannot move
// it, so the migration fails saying so, and the container goes on running
// on the source with that client still served. Once the client is gone,
// the migration goes through.
func TestUnixSocketOutsideClient(t *testing.T) {
	l := newLab(t, 2)
	l.runRedisUnix("uo", "edge-1")
	l.mustRedisUnix("uo", "OK", "SET", "k", "v")
	held, err := net.Dial("unix", l.inContainer("uo", redisSock))
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	hr := bufio.NewReader(held)
	if got, err := redisDo(held, hr, "PING"); err != nil || got != "PONG" {
		t.Fatalf("held client: PING: %q %v", got, err)
	}

	out, err := l.coat("migrate", "uo", "--to", "edge-2")
	if err == nil {
		t.Fatalf("migration with an outside client connected over a UNIX socket succeeded:\n%s", out)
	}
	if !strings.Contains(out, "connected to a process outside it") || !strings.Contains(out, "close it and migrate again") {
		t.Errorf("failed migration does not say what to do:\n%s", out)
	}
	if got := l.get("uo"); got.Host != "edge-1" || got.Status != "running" {
		t.Fatalf("after the failed migration: %+v, want running on edge-1", got)
	}
	if got, err := redisDo(held, hr, "GET", "k"); err != nil || got != "v" {
		t.Fatalf("held client after the failed migration: GET k: %q %v", got, err)
	}
	l.mustRedisUnix("uo", "v", "GET", "k")

	held.Close()
	// redis closes its end when it reads the EOF: wait until it serves
	// only the asking client.
	deadline := time.Now().Add(10 * time.Second)
	for {
		list, err := redisUnix(l.inContainer("uo", redisSock), "CLIENT", "LIST")
		if err == nil && strings.Count(strings.TrimSpace(list), "\n") == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("redis still lists the closed client: %q %v", list, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	l.migrate("uo", "edge-2")
	if got := l.get("uo"); got.Host != "edge-2" || got.Status != "running" {
		t.Fatalf("after the migration: %+v, want running on edge-2", got)
	}
	l.mustRedisUnix("uo", "v", "GET", "k")
}

// pairStatus is the unixpair workload's health (e2e/testdata/unixpair).
type pairStatus struct {
	Stream, Dgram, Errors int
	FirstError            string
}

// pairStatus asks the unixpair workload in name, over its socket file,
// how its in-container client fares; the workload closes the connection
// once it replied, and pairStatus waits for that.
func (l *testLab) pairStatus(name string) pairStatus {
	l.t.Helper()
	c, err := net.DialTimeout("unix", l.inContainer(name, "/tmp/pair.sock"), 5*time.Second)
	if err != nil {
		l.t.Fatalf("connect to /tmp/pair.sock in %s: %v", name, err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte("status\n")); err != nil {
		l.t.Fatal(err)
	}
	b, err := io.ReadAll(c)
	if err != nil {
		l.t.Fatalf("status of %s: %v", name, err)
	}
	var s pairStatus
	for _, f := range strings.Fields(string(b)) {
		k, v, _ := strings.Cut(f, "=")
		n, _ := strconv.Atoi(v)
		switch k {
		case "stream":
			s.Stream = n
		case "dgram":
			s.Dgram = n
		case "errors":
			s.Errors = n
		case "first_error":
			s.FirstError = v
		}
	}
	if !strings.HasPrefix(string(b), "stream=") {
		l.t.Fatalf("status of %s: %q", name, b)
	}
	return s
}

// A client inside the container, connected over the container's UNIX
// sockets (a stream connection to a listening socket and a datagram
// socket bound to a file talking to another bound one, every file in
// /tmp of the writable layer), goes on exchanging through the same
// connection across a stop-and-copy and a post-copy migration.
func TestUnixSocketPairInContainer(t *testing.T) {
	l := runUnixPair(t, nil)
	n := l.pairProgress("up", "before any migration", 0)
	for _, step := range []struct{ to, strategy string }{{"edge-2", "stop-and-copy"}, {"edge-1", "post-copy"}} {
		l.migrateStrategy("up", step.to, "--strategy", step.strategy)
		if got := l.get("up"); got.Host != step.to || got.Status != "running" {
			t.Fatalf("after %s: %+v, want running on %s", step.strategy, got, step.to)
		}
		for _, f := range []string{"/tmp/pair.sock", "/tmp/pair.dgram", "/tmp/client.dgram"} {
			if fi, err := os.Lstat(l.inContainer("up", f)); err != nil || fi.Mode().Type() != fs.ModeSocket {
				t.Errorf("after %s: %s: %v %v, want a socket file", step.strategy, f, fi, err)
			}
		}
		n = l.pairProgress("up", "after "+step.strategy, n)
	}
}

// The container's image has a regular file where the workload binds its
// socket (the workload removes it first, so on the source the socket in
// the upper layer hides it). On the destination the file is in the way
// of the restore's bind: the migration fails saying what to do, and the
// container goes on running on the source, its in-container client
// unharmed.
func TestUnixSocketFileInTheWay(t *testing.T) {
	l := runUnixPair(t, func(root string) {
		if err := os.Mkdir(filepath.Join(root, "tmp"), 0o755); err != nil && !os.IsExist(err) {
			t.Fatal(err)
		}
		if err := os.Chmod(filepath.Join(root, "tmp"), os.ModeSticky|0o777); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, "tmp/pair.sock"), []byte("placeholder\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	})
	n := l.pairProgress("up", "before the migration", 0)
	out, err := l.coat("migrate", "up", "--to", "edge-2")
	if err == nil {
		t.Fatalf("migration onto a file in the way of /tmp/pair.sock succeeded:\n%s", out)
	}
	if !strings.Contains(out, "/tmp/pair.sock cannot be bound again") || !strings.Contains(out, "remove it from the image") {
		t.Errorf("failed migration does not say what to do:\n%s", out)
	}
	if got := l.get("up"); got.Host != "edge-1" || got.Status != "running" {
		t.Fatalf("after the failed migration: %+v, want running on edge-1", got)
	}
	l.pairProgress("up", "after the failed migration", n)
}

// runUnixPair builds the unixpair workload (e2e/testdata/unixpair) into an
// image, lets image change its root, imports it into a new lab of two
// hosts and runs it on edge-1 as "up", bound and making progress.
func runUnixPair(t *testing.T, image func(root string)) *testLab {
	t.Helper()
	requireRoot(t)
	work := t.TempDir()
	bin := filepath.Join(work, "unixpair")
	build := exec.Command("go", "build", "-trimpath", "-o", bin, "./testdata/unixpair")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build the unixpair workload: %v\n%s", err, out)
	}
	img := filepath.Join(work, "img")
	if err := images.BuildStatic(img, bin, "unixpair"); err != nil {
		t.Fatal(err)
	}
	if image != nil {
		image(img)
	}
	l := newLab(t, 2)
	l.must("image", "import", "unixpair", img)
	l.must("run", "--host", "edge-1", "--name", "up", "--image", "unixpair", "--", "/bin/unixpair")
	waitFor(t, 15*time.Second, func() string {
		if fi, err := os.Lstat(l.inContainer("up", "/tmp/pair.sock")); err != nil || fi.Mode().Type() != fs.ModeSocket {
			return fmt.Sprintf("the unixpair workload did not bind /tmp/pair.sock: %v %v", fi, err)
		}
		return ""
	})
	return l
}

// pairProgress waits until the in-container client of the unixpair
// workload in name has made 5 round trips on each socket beyond after,
// failing the test if it reports a failure; it returns its stream round
// trips.
func (l *testLab) pairProgress(name, when string, after int) int {
	l.t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		s := l.pairStatus(name)
		if s.Errors != 0 {
			l.t.Fatalf("%s: the in-container client failed: %+v", when, s)
		}
		if s.Stream > after+5 && s.Dgram > after+5 {
			return s.Stream
		}
		if time.Now().After(deadline) {
			l.t.Fatalf("%s: the in-container client makes no progress: %+v (had %d round trips)", when, s, after)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
