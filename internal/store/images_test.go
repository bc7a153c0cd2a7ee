package store

import (
	"errors"
	"testing"
)

func TestEtcdImages(t *testing.T) {
	s := newTestStore(t)
	ctx := testCtx(t)
	if _, err := s.Image(ctx, "127.0.0.1:5000/app:1"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Image before Put: err = %v, want ErrNotFound", err)
	}
	im := Image{Name: "127.0.0.1:5000/app:1", Digest: "sha256:ab", Entrypoint: []string{"/bin/app"}, Users: map[string]string{"app": "1000:1000"}}
	if err := s.PutImage(ctx, im); err != nil {
		t.Fatal(err)
	}
	if err := s.PutImage(ctx, Image{Name: "a"}); err != nil {
		t.Fatal(err)
	}
	got, err := s.Image(ctx, "127.0.0.1:5000/app:1")
	if err != nil || got.Digest != "sha256:ab" || got.Users["app"] != "1000:1000" || got.Entrypoint[0] != "/bin/app" {
		t.Fatalf("Image = %+v, %v", got, err)
	}
	list, err := s.Images(ctx)
	if err != nil || len(list) != 2 || list[0].Name != "127.0.0.1:5000/app:1" || list[1].Name != "a" {
		t.Fatalf("Images = %+v, %v", list, err)
	}
	if err := s.DeleteImage(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Image(ctx, "a"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Image after Delete: err = %v", err)
	}
	if err := s.PutImage(ctx, Image{Name: "../x"}); err == nil {
		t.Fatal("PutImage accepted a bad name")
	}
}
