package sample

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestMainStreamJSONReport(t *testing.T) {
	_, addr, _ := startServer(t)
	tl := filepath.Join(t.TempDir(), "timeline.csv")
	var out, errOut bytes.Buffer
	code := Main([]string{"stream", "--addr", addr, "--duration", "300ms", "--rate", "2MB/s",
		"--chunk", "512", "--json", "--timeline", tl}, &out, &errOut)
	if code != 0 {
		t.Fatalf("exit %d, stdout %q, stderr %q", code, out.String(), errOut.String())
	}
	var m map[string]any
	if err := json.Unmarshal(out.Bytes(), &m); err != nil {
		t.Fatalf("report %q: %v", out.String(), err)
	}
	for _, k := range []string{"sent", "received", "errors", "first_error", "max_gap_ms",
		"gap_at", "connection_error", "duration_ms"} {
		if _, ok := m[k]; !ok {
			t.Errorf("report lacks %q: %s", k, out.String())
		}
	}
	if m["sent"] != m["received"] || m["errors"] != 0.0 || m["connection_error"] != "" {
		t.Errorf("report not clean: %s", out.String())
	}
	// A header, then rows of milliseconds since the start and bytes
	// echoed; the first row comes at the start (a loaded machine may
	// take a millisecond or a few to write it).
	b, err := os.ReadFile(tl)
	rows := strings.Split(strings.TrimSpace(string(b)), "\n")
	var first struct{ ms, bytes int }
	if err == nil && len(rows) > 1 {
		_, err = fmt.Sscanf(rows[1], "%d,%d", &first.ms, &first.bytes)
	}
	if err != nil || len(rows) < 2 || rows[0] != "t_ms,bytes_echoed" || first.ms > 100 {
		t.Errorf("timeline %q, %v", b, err)
	}
}

func TestMainStreamFailsOnDialError(t *testing.T) {
	var out, errOut bytes.Buffer
	code := Main([]string{"stream", "--addr", "127.0.0.1:1", "--duration", "100ms"}, &out, &errOut)
	if code != 1 || !strings.Contains(out.String(), "result:           FAIL") {
		t.Fatalf("exit %d, stdout %q", code, out.String())
	}
}

func TestMainCtl(t *testing.T) {
	_, _, ctl := startServer(t)
	run := func(args ...string) (int, string) {
		var out, errOut bytes.Buffer
		code := Main(append([]string{"ctl", "--addr", ctl}, args...), &out, &errOut)
		return code, strings.TrimSpace(out.String())
	}
	if code, out := run("incr"); code != 0 || out != "1" {
		t.Errorf("ctl incr = %d %q", code, out)
	}
	if code, out := run("put", "k", "v1 v2"); code != 0 || out != "ok" {
		t.Errorf("ctl put = %d %q", code, out)
	}
	if code, out := run("get", "k"); code != 0 || out != "v1 v2" {
		t.Errorf("ctl get = %d %q", code, out)
	}
	if code, out := run("get", "nope"); code != 1 || !strings.HasPrefix(out, "ERR") {
		t.Errorf("ctl get missing = %d %q", code, out)
	}
	if code, out := run("stats"); code != 0 || !strings.Contains(out, `"counter":1`) {
		t.Errorf("ctl stats = %d %q", code, out)
	}
	var out, errOut bytes.Buffer
	if code := Main([]string{"ctl", "--addr", "127.0.0.1:1", "stats"}, &out, &errOut); code != 1 {
		t.Errorf("ctl to closed port exit %d, want 1", code)
	}
}

func TestMainUsage(t *testing.T) {
	var out, errOut bytes.Buffer
	if code := Main(nil, &out, &errOut); code != 2 {
		t.Errorf("no args exit %d", code)
	}
	if code := Main([]string{"bogus"}, &out, &errOut); code != 2 {
		t.Errorf("bogus exit %d", code)
	}
	if code := Main([]string{"stream"}, &out, &errOut); code != 2 {
		t.Errorf("stream without addr exit %d", code)
	}
}
