package names

import (
	"strings"
	"testing"
)

func TestContainerAndHost(t *testing.T) {
	for _, tc := range []struct {
		name string
		ok   bool
	}{
		{"a", true}, {"edge-1", true}, {"web-01", true}, {strings.Repeat("a", 32), true},
		{"", false}, {strings.Repeat("a", 33), false}, {"-a", false}, {"a-", false},
		{"Bad_Name!", false}, {"A", false}, {"a.b", false}, {"a/b", false}, {"..", false},
		{"../containers/a", false}, {"a b", false}, {"a\x00", false}, {"é", false},
	} {
		if err := Container(tc.name); (err == nil) != tc.ok {
			t.Errorf("Container(%q) = %v, want ok=%v", tc.name, err, tc.ok)
		} else if err != nil && !strings.Contains(err.Error(), "1-32 lowercase letters") {
			t.Errorf("Container(%q) error does not say what is allowed: %v", tc.name, err)
		}
		if err := Host(tc.name); (err == nil) != tc.ok {
			t.Errorf("Host(%q) = %v, want ok=%v", tc.name, err, tc.ok)
		}
	}
}

const (
	hx = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	dg = "sha256:" + hx
)

func TestParseImage(t *testing.T) {
	for _, tc := range []struct {
		in, canon, key string
	}{
		{"sample", "sample", "sample"},
		{"sample:latest", "sample", "sample"},
		{"iperf3", "iperf3", "iperf3"},
		{"lab/redis:7.0", "lab/redis:7.0", "lab+redis@7.0"},
		{"my_app.v2-x", "my_app.v2-x", "my_app.v2-x"},
		{"a__b", "a__b", "a__b"},
		{"a:V1_rc", "a:V1_rc", "a@V1_rc"},
		{"127.0.0.1:5000/lab/app:1.0", "127.0.0.1:5000/lab/app:1.0", "127.0.0.1@5000+lab+app@1.0"},
		{"localhost:5000/app", "localhost:5000/app", "localhost@5000+app"},
		{"docker.io/library/busybox:1.36", "docker.io/library/busybox:1.36", "docker.io+library+busybox@1.36"},
		{"a@" + dg, "a@" + dg, "a=sha256-" + hx},
		{"a:latest@" + dg, "a@" + dg, "a=sha256-" + hx},
		{"lab/app:1@" + dg, "lab/app:1@" + dg, "lab+app@1=sha256-" + hx},
		{"h:5000/a@" + dg, "h:5000/a@" + dg, "h@5000+a=sha256-" + hx},
	} {
		im, err := ParseImage(tc.in)
		if err != nil {
			t.Errorf("ParseImage(%q): %v", tc.in, err)
			continue
		}
		if im.String() != tc.canon || im.Key() != tc.key {
			t.Errorf("ParseImage(%q) = %q key %q, want %q key %q", tc.in, im, im.Key(), tc.canon, tc.key)
		}
	}
	for _, in := range []string{
		"", "..", ".", "../containers/a", "/etc", "a/../b", "a//b", "a/", "/a", "A", "Sample",
		"a b", "a..b", ".a", "a.", "-a", "a-", "a:", "a:.x", "a:-x", "a@sha256:00", "a\\b", "a@" + strings.ToUpper(dg), "a@sha512:" + hx, "a@" + dg + "@" + dg, "@" + dg, "a@" + dg + "x", "a=sha256-" + hx,
		"a:b/c", "a:b:c", "a/b:5000/c", ":5000/a", "a:123456/b", "a\x00", strings.Repeat("a", 201), "a:" + strings.Repeat("t", 129), "a___b",
	} {
		im, err := ParseImage(in)
		if err == nil {
			t.Errorf("ParseImage(%q) = %q, want an error", in, im)
			continue
		}
		if !strings.Contains(err.Error(), "an image name is NAME[:TAG][@sha256:HEX]") {
			t.Errorf("ParseImage(%q) error does not say what is allowed: %v", in, err)
		}
	}
}

// FuzzParseImage: whatever is accepted has a canonical form that parses to
// itself and a key that is a single, visible path element.
func FuzzParseImage(f *testing.F) {
	for _, s := range []string{"sample", "lab/redis:7.0", "../containers/a", "a:latest", "a/./b", "a@x", "x:Y", "a/b/c:d.e", "h:5000/a:1", "a:1@" + dg, "h:5000/a@" + dg} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		im, err := ParseImage(s)
		if err != nil {
			return
		}
		again, err := ParseImage(im.String())
		if err != nil || again != im {
			t.Fatalf("%q: canonical %q does not parse back: %v %v", s, im, again, err)
		}
		k := im.Key()
		if k == "" || k == "." || k == ".." || strings.HasPrefix(k, ".") || strings.ContainsAny(k, "/:,\x00") || len(k) > MaxImage {
			t.Fatalf("%q: unsafe key %q", s, k)
		}
	})
}

// TestImageKeyInjective: different references, with and without digests,
// tags and ports, never share a key.
func TestImageKeyInjective(t *testing.T) {
	dg2 := "sha256:" + strings.Repeat("f", 64)
	refs := []string{"a", "a:1", "a@" + dg, "a@" + dg2, "a:1@" + dg, "a:1@" + dg2, "a/b", "a/b:1", "a/b@" + dg,
		"h:5000/a", "h:5000/a@" + dg, "h/a:5000", "a:sha256", "a:sha256-" + hx[:60], "h:1/a:1@" + dg}
	seen := map[string]string{}
	for _, r := range refs {
		im, err := ParseImage(r)
		if err != nil {
			t.Fatalf("ParseImage(%q): %v", r, err)
		}
		k := im.Key()
		if o, ok := seen[k]; ok {
			t.Errorf("%q and %q share the key %q", r, o, k)
		}
		seen[k] = r
	}
}
