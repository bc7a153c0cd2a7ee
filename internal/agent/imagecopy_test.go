package agent

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"

	"github.com/coat-project/coat/internal/api"
	"github.com/coat-project/coat/internal/store"
)

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(s[:])
}

// shTar is a rootfs tar stream whose /bin/sh holds content.
func shTar(t *testing.T, content string) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, h := range []*tar.Header{
		{Name: "rootfs/", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "rootfs/bin/", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "rootfs/bin/sh", Typeflag: tar.TypeReg, Mode: 0o755, Size: int64(len(content))},
	} {
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := tw.Write([]byte(content)); err != nil {
		t.Fatal(err)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// leftovers lists what images/ holds besides the images named.
func leftovers(t *testing.T, a *Agent, keep ...string) []string {
	t.Helper()
	ents, err := os.ReadDir(a.imagesDir())
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		if !has(keep, e.Name()) {
			out = append(out, e.Name())
		}
	}
	return out
}

func has(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// An import keeps the stream it received, byte for byte, and its digest;
// a stream without the digest the sender gave changes nothing.
func TestImportKeepsStreamAndChecksDigest(t *testing.T) {
	a, h := badInputAgent(t)
	put := func(query string, body []byte) *httptest.ResponseRecorder {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, httptest.NewRequest("PUT", "/v1/images/app"+query, bytes.NewReader(body)))
		return w
	}
	first := shTar(t, "v1")
	w := put("?digest="+sha(first), first)
	if w.Code != http.StatusOK || !strings.Contains(w.Body.String(), sha(first)) {
		t.Fatalf("PUT with its digest: %d %s", w.Code, w.Body)
	}
	dir := filepath.Join(a.imagesDir(), "app")
	zb, err := os.ReadFile(filepath.Join(dir, imageTarFile))
	if err != nil {
		t.Fatal(err)
	}
	zr, err := zstd.NewReader(bytes.NewReader(zb), zstd.WithDecoderConcurrency(1))
	if err != nil {
		t.Fatal(err)
	}
	kept, err := io.ReadAll(zr)
	zr.Close()
	if err != nil || !bytes.Equal(kept, first) {
		t.Errorf("kept stream: %d bytes (%v), want the %d received", len(kept), err, len(first))
	}
	if d, _ := os.ReadFile(filepath.Join(dir, imageDigestFile)); strings.TrimSpace(string(d)) != sha(first) {
		t.Errorf("digest file %q, want %s", d, sha(first))
	}

	second := shTar(t, "v2")
	w = put("?digest="+sha(first), second)
	if w.Code != http.StatusBadRequest || !strings.Contains(w.Body.String(), "nothing imported") {
		t.Errorf("PUT with another stream's digest: %d %s", w.Code, w.Body)
	}
	if w := put("?digest=md5:abc", second); w.Code != http.StatusBadRequest {
		t.Errorf("PUT with a malformed digest: %d %s", w.Code, w.Body)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "rootfs", "bin", "sh")); string(b) != "v1" {
		t.Errorf("after refused imports the image holds %q, want v1", b)
	}
	if l := leftovers(t, a, "app"); len(l) != 0 {
		t.Errorf("refused imports left %v", l)
	}
}

// source is a peer serving one kept image stream, as handleImageSend
// does; cut, if positive, ends the reply after that many bytes.
func source(t *testing.T, zb []byte, cut int) *api.Client {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet || r.URL.Path != "/v1/outgoing/web/image" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(zb)))
		if cut > 0 {
			w.Write(zb[:cut])
			w.(http.Flusher).Flush()
			panic(http.ErrAbortHandler) // the source is gone mid-copy
		}
		w.Write(zb)
	}))
	t.Cleanup(srv.Close)
	return &api.Client{Base: srv.URL, HTTP: srv.Client()}
}

func compress(t *testing.T, b []byte) []byte {
	t.Helper()
	zw, err := zstd.NewWriter(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer zw.Close()
	return zw.EncodeAll(b, nil)
}

// A copy from the source is kept only whole and with the recorded
// digest; otherwise nothing of it stays.
func TestCopyImage(t *testing.T) {
	good := shTar(t, strings.Repeat("x", 200000))
	zgood := compress(t, good)
	zother := compress(t, shTar(t, "not the image"))
	dead := httptest.NewServer(http.NotFoundHandler())
	deadClient := &api.Client{Base: dead.URL, HTTP: dead.Client()}
	dead.Close()
	for _, tc := range []struct {
		what string
		peer *api.Client
		want string // error substring; "" is success
	}{
		{"whole and matching", source(t, zgood, 0), ""},
		{"another image", source(t, zother, 0), "the image's record says " + sha(good)},
		{"source gone mid-copy", source(t, zgood, len(zgood)/2), "unexpected EOF"},
		{"source unreachable", deadClient, "connect"},
		{"not zstd", source(t, good, 0), "magic"},
	} {
		t.Run(tc.what, func(t *testing.T) {
			a, _ := badInputAgent(t)
			n, err := a.copyImage(context.Background(), tc.peer, "web", "app", sha(good))
			if tc.want == "" {
				if err != nil {
					t.Fatalf("copy: %v", err)
				}
				if n != int64(len(zgood)) {
					t.Errorf("copied %d bytes, want %d", n, len(zgood))
				}
				if !a.rt.HasImage("app") {
					t.Errorf("image not installed")
				}
				if b, _ := os.ReadFile(filepath.Join(a.imagesDir(), "app", imageTarFile)); !bytes.Equal(b, zgood) {
					t.Errorf("the copy's kept stream differs from the source's")
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("copy: %v, want an error with %q", err, tc.want)
			}
			if tc.what == "another image" && !errors.Is(err, errBadCopy) {
				t.Errorf("mismatch %v is not errBadCopy", err)
			}
			if a.rt.HasImage("app") {
				t.Errorf("a bad copy was installed")
			}
			if l := leftovers(t, a); len(l) != 0 {
				t.Errorf("a bad copy left %v", l)
			}
		})
	}
}

// imageRecords is a Store with image records.
type imageRecords struct {
	store.Store
	ims map[string]store.Image
}

func (s *imageRecords) Image(_ context.Context, name string) (store.Image, error) {
	im, ok := s.ims[name]
	if !ok {
		return im, store.ErrNotFound
	}
	return im, nil
}

// An image whose record has no digest (recorded by an older CLI) is not
// copied: nothing could check the copy.
func TestEnsureImageNeedsDigest(t *testing.T) {
	a, _ := badInputAgent(t)
	a.st = &imageRecords{ims: map[string]store.Image{"old": {Name: "old"}}}
	for _, img := range []string{"old", "unrecorded"} {
		_, err := a.ensureImage(context.Background(), store.Container{Name: "web", Host: "edge-2", Image: img})
		if !errors.Is(err, errBadRequest) || !strings.Contains(err.Error(), "no digest") || !strings.Contains(err.Error(), "import it again") {
			t.Errorf("%s: %v", img, err)
		}
	}
	if l := leftovers(t, a); len(l) != 0 {
		t.Errorf("left %v", l)
	}
}
