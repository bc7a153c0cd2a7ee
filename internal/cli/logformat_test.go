package cli

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

func TestLogFormat(t *testing.T) {
	var buf bytes.Buffer
	l, err := newLogger(&buf, "json")
	if err != nil {
		t.Fatal(err)
	}
	l.With("host", "edge-1").Info("migration phase", "migration", "web-1", "phase", "checkpointed", "duration_ms", 12.5)
	var rec map[string]any
	if err := json.Unmarshal(buf.Bytes(), &rec); err != nil {
		t.Fatalf("--log-format json wrote %q: not one JSON object: %v", buf.String(), err)
	}
	for k, want := range map[string]any{"msg": "migration phase", "level": "INFO", "host": "edge-1", "migration": "web-1", "phase": "checkpointed", "duration_ms": 12.5} {
		if rec[k] != want {
			t.Errorf("%s = %v, want %v (record %s)", k, rec[k], want, buf.String())
		}
	}

	buf.Reset()
	l, err = newLogger(&buf, "text")
	if err != nil {
		t.Fatal(err)
	}
	l.Info("migration phase", "phase", "locked")
	if got := buf.String(); !strings.Contains(got, `msg="migration phase" phase=locked`) {
		t.Errorf("--log-format text wrote %q", got)
	}

	if _, err := newLogger(&buf, "yaml"); err == nil || !strings.Contains(err.Error(), "want text or json") {
		t.Errorf("--log-format yaml: %v, want an error that names the formats", err)
	}
}

func TestAgentRefusesBadLogFormatAndMetricsAddr(t *testing.T) {
	isolate(t)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"agent", "--log-format", "xml"}, "--log-format \"xml\": want text or json"},
		{[]string{"agent", "--name", "edge-1", "--underlay-ip", "10.0.0.1", "--subnet", "10.202.0.0/24", "--pki-dir", t.TempDir(), "--metrics-addr", "9100"}, "--metrics-addr \"9100\": want IP:PORT"},
	} {
		root := newRoot()
		root.SetArgs(tc.args)
		root.SetOut(&bytes.Buffer{})
		root.SetErr(&bytes.Buffer{})
		err := root.Execute()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("coat %s: %v, want %q", strings.Join(tc.args, " "), err, tc.want)
		}
	}
}
