package store

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/coat-project/coat/internal/names"
)

// Image is the cluster's record of an image (under images/<key>): where
// it came from, the digest of its root filesystem as every host received
// it, and, for one pulled or loaded from an OCI or Docker image, what
// `coat run` takes from its configuration (an image made with `coat
// image import` from a directory has none).
type Image struct {
	Name   string `json:"name"`   // canonical reference (names.Image.String)
	Source string `json:"source"` // the reference pulled, the archive loaded or the directory imported
	Digest string `json:"digest"` // the image's manifest digest (OCI images only)
	Size   int64  `json:"size"`   // bytes of the flattened filesystem
	// RootfsDigest is "sha256:HEX" of the root filesystem's tar stream
	// as the CLI sent it to every host (names prefixed rootfs/). A host
	// that lacks the image gets a copy from another host and keeps it
	// only if it has this digest. Records written before COAT recorded
	// it have none: such an image cannot be copied (import it again).
	RootfsDigest string `json:"rootfs_digest,omitempty"`
	// Layers, bottom first: each host holds each layer once, under its
	// diffID, and an image is its list. Records written before COAT
	// stored layers have none (the image was flattened on every host:
	// RootfsDigest above).
	Layers []Layer `json:"layers,omitempty"`
	// Insecure: pulled with --insecure (plain HTTP); a host that lacks
	// the image pulls it the same way.
	Insecure bool `json:"insecure,omitempty"`
	// The image's configuration.
	Entrypoint []string `json:"entrypoint,omitempty"`
	Cmd        []string `json:"cmd,omitempty"`
	Env        []string `json:"env,omitempty"`
	WorkingDir string   `json:"working_dir,omitempty"`
	User       string   `json:"user,omitempty"`
	// Users and Groups are the image's /etc/passwd and /etc/group:
	// name -> uid (with ":gid", the primary group, for users).
	Users   map[string]string `json:"users,omitempty"`
	Groups  map[string]string `json:"groups,omitempty"`
	Created time.Time         `json:"created"`
}

// Layer is one layer of an image.
type Layer struct {
	Digest string `json:"digest"` // diffID: "sha256:HEX" of the uncompressed tar stream
	Size   int64  `json:"size"`   // bytes of that stream
}

// LayerDigests are the image's layer digests, bottom first.
func (im Image) LayerDigests() []string {
	out := make([]string, len(im.Layers))
	for i, l := range im.Layers {
		out[i] = l.Digest
	}
	return out
}

func (s *Etcd) imageKey(name string) (string, error) {
	k, err := names.ImageKey(name)
	if err != nil {
		return "", err
	}
	return s.prefix + "images/" + k, nil
}

// PutImage records an image (replacing its previous record).
func (s *Etcd) PutImage(ctx context.Context, im Image) error {
	k, err := s.imageKey(im.Name)
	if err != nil {
		return err
	}
	b, _ := json.Marshal(im)
	if _, err := s.cli.Put(ctx, k, string(b)); err != nil {
		return fmt.Errorf("record image %s: %w", im.Name, err)
	}
	return nil
}

// Image returns an image's record; ErrNotFound if it has none.
func (s *Etcd) Image(ctx context.Context, name string) (Image, error) {
	k, err := s.imageKey(name)
	if err != nil {
		return Image{}, err
	}
	resp, err := s.cli.Get(ctx, k)
	if err != nil {
		return Image{}, fmt.Errorf("get image %s: %w", name, err)
	}
	if len(resp.Kvs) == 0 {
		return Image{}, fmt.Errorf("image %q: %w", name, ErrNotFound)
	}
	var im Image
	if err := json.Unmarshal(resp.Kvs[0].Value, &im); err != nil {
		return Image{}, fmt.Errorf("decode image %s: %w", name, err)
	}
	return im, nil
}

// Images lists the image records by name.
func (s *Etcd) Images(ctx context.Context) ([]Image, error) {
	resp, err := s.cli.Get(ctx, s.prefix+"images/", clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("list images: %w", err)
	}
	out := make([]Image, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		var im Image
		if err := json.Unmarshal(kv.Value, &im); err != nil {
			return nil, fmt.Errorf("decode image %s: %w", kv.Key, err)
		}
		out = append(out, im)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// DeleteImage removes an image's record (none is not an error).
func (s *Etcd) DeleteImage(ctx context.Context, name string) error {
	k, err := s.imageKey(name)
	if err != nil {
		return err
	}
	if _, err := s.cli.Delete(ctx, k); err != nil {
		return fmt.Errorf("delete image %s: %w", name, err)
	}
	return nil
}
