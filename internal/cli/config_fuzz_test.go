package cli

import (
	"strings"
	"testing"
)

func TestParseFileConfig(t *testing.T) {
	fc, err := parseFileConfig([]byte(fullConfig))
	if err != nil || fc.CertName != "filecert" || fc.EtcdEndpoints != "https://file:2379" {
		t.Fatalf("%+v, %v", fc, err)
	}
	for body, want := range map[string]string{
		`{"cert_name":"../../etc/x"}`: `cert_name "../../etc/x"`,
		`{"cert_name":"a/b"}`:         "PKI_DIR/NAME.crt",
		`{"etcd_endpoints": `:         "want a JSON object",
		`[]`:                          "want a JSON object",
	} {
		if _, err := parseFileConfig([]byte(body)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", body, err, want)
		}
	}
}

// FuzzParseFileConfig: any config file is read without a panic, and an
// accepted certificate name is a plain name (it names files).
func FuzzParseFileConfig(f *testing.F) {
	for _, s := range []string{fullConfig, `{}`, `{"cert_name":"../x"}`, `{"cert_name":""}`, `{"pki_dir":1}`, `null`, `{`, ``} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		fc, err := parseFileConfig(b)
		if err != nil || fc.CertName == "" {
			return
		}
		if strings.ContainsAny(fc.CertName, "/.\\\x00") || len(fc.CertName) > 32 {
			t.Fatalf("cert_name %q accepted", fc.CertName)
		}
	})
}
