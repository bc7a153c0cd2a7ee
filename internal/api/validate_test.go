package api

import (
	"bytes"
	"strings"
	"testing"
)

func TestDecodeValidates(t *testing.T) {
	for _, tc := range []struct {
		body string
		v    Request
		want string // "" = ok
	}{
		{`{"name":"web","image":"sample","args":["x"]}`, &RunRequest{}, ""},
		{`{"name":"web","image":"lab/redis:latest","args":["x"],"ip":"10.0.0.5","env":["A=1"]}`, &RunRequest{}, ""},
		{`{"name":"web","image":"../containers/a","args":["x"]}`, &RunRequest{}, "invalid image"},
		{`{"name":"web","image":"/etc","args":["x"]}`, &RunRequest{}, "invalid image"},
		{`{"name":"Bad_Name!","image":"sample","args":["x"]}`, &RunRequest{}, "invalid name"},
		{`{"name":"../a","image":"sample","args":["x"]}`, &RunRequest{}, "invalid name"},
		{`{"name":"web","image":"sample"}`, &RunRequest{}, "no command"},
		{`{"name":"web","image":"sample","args":["x"],"ip":"::1"}`, &RunRequest{}, "invalid ip"},
		{`{"name":"web","image":"sample","args":["x"],"env":["NOEQ"]}`, &RunRequest{}, "KEY=VALUE"},
		{`{"name":"web","image":"sample","args":["a\u0000b"]}`, &RunRequest{}, "NUL"},
		{`{"name":"web","image":"sample","args":["x"]} {"name":"x"}`, &RunRequest{}, "data after"},
		{`{"name":`, &RunRequest{}, "decode request"},
		{`[]`, &RunRequest{}, "decode request"},
		{`{"to":"edge-2"}`, &MigrateRequest{}, ""},
		{`{"to":"../edge"}`, &MigrateRequest{}, "invalid host name"},
		{`{"to":""}`, &MigrateRequest{}, "invalid host name"},
		// A prepare names nothing: the destination reads the container
		// from the store (a record in the body is ignored).
		{`{"hold":true,"container":{"name":"web","image":"../containers/x"}}`, &PrepareRequest{}, ""},
		{`{"name":"web"}`, &RestoreRequest{}, ""},
		{`{"name":"a/b"}`, &RestoreRequest{}, "invalid name"},
		{`{}`, &SwitchRequest{}, ""},
	} {
		err := Decode(strings.NewReader(tc.body), MaxRequest, tc.v)
		if tc.want == "" && err != nil {
			t.Errorf("%s: %v", tc.body, err)
		}
		if tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("%s: err = %v, want %q", tc.body, err, tc.want)
		}
	}
	var r RunRequest
	if err := Decode(strings.NewReader(`{"name":"web","image":"sample:latest","args":["x"]}`), MaxRequest, &r); err != nil || r.Image != "sample" {
		t.Errorf("image not canonical: %q, %v", r.Image, err)
	}
	if err := Decode(bytes.NewReader(bytes.Repeat([]byte(" "), 101)), 100, &r); err == nil || !strings.Contains(err.Error(), "larger than 100 bytes") {
		t.Errorf("oversized request: %v", err)
	}
}

// FuzzDecodeRequest: decoding and validating any body never panics, and
// whatever is accepted names only valid containers, hosts and images.
func FuzzDecodeRequest(f *testing.F) {
	for _, s := range []string{
		`{"name":"web","image":"sample","args":["x"]}`,
		`{"name":"web","image":"../containers/a","args":["x"]}`,
		`{"name":"Bad_Name!","image":"sample","args":["x"]}`,
		`{"to":"edge-2","strategy":"post-copy"}`,
		`{"container":{"name":"web","host":"edge-1","image":"lab/redis:7","ip":"10.0.0.5"},"hold":true}`,
		`{"name":"web","replay":["AAEC"]}`,
		`{"neighbours":[{"ip":"10.0.0.1","mac":"02:00:00:00:00:01"}]}`,
		`{"name":"\u002e\u002e"}`, `null`, `{}`, `[`, "",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		var run RunRequest
		if Decode(bytes.NewReader(body), MaxRequest, &run) == nil {
			mustValid(t, "run name", run.Name, nameOK)
			mustValid(t, "run image", run.Image, imageOK)
		}
		var mig MigrateRequest
		if Decode(bytes.NewReader(body), MaxRequest, &mig) == nil {
			mustValid(t, "migrate to", mig.To, nameOK)
		}
		var prep PrepareRequest
		_ = Decode(bytes.NewReader(body), MaxRequest, &prep)
		var rest RestoreRequest
		if Decode(bytes.NewReader(body), MaxRequest, &rest) == nil && rest.Name != "" {
			mustValid(t, "restore name", rest.Name, nameOK)
		}
		var sw SwitchRequest
		_ = Decode(bytes.NewReader(body), MaxRequest, &sw)
	})
}

// nameOK and imageOK restate the rules independently of names.
func nameOK(s string) bool {
	if len(s) < 1 || len(s) > 32 || s[0] == '-' || s[len(s)-1] == '-' {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

func imageOK(s string) bool {
	return s != "" && !strings.HasPrefix(s, "/") && !strings.Contains(s, "..") && !strings.Contains(s, "//") &&
		!strings.ContainsAny(s, "\\ \x00@") && strings.ToLower(strings.SplitN(s, ":", 2)[0]) == strings.SplitN(s, ":", 2)[0]
}

func mustValid(t *testing.T, what, s string, ok func(string) bool) {
	t.Helper()
	if !ok(s) {
		t.Fatalf("%s %q accepted", what, s)
	}
}
