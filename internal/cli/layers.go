package cli

import (
	"context"
	"fmt"
	"io"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/coat-project/coat/internal/api"
	"github.com/coat-project/coat/internal/oci"
	"github.com/coat-project/coat/internal/store"
)

const (
	// layerTimeout bounds the sending of one layer to one host.
	layerTimeout = 10 * time.Minute
	// askTimeout bounds a short question to an agent.
	askTimeout = 30 * time.Second
)

// imageLayers is what sendImage learnt of an image's layers.
type imageLayers struct {
	Layers  []store.Layer
	Changes oci.Changes
	Size    int64 // bytes of file content
	// Users and Groups from the topmost layer's etc/passwd and etc/group.
	Users, Groups map[string]string
}

// sendImage checks every layer of an image against its diffID (diffIDs,
// from the image's configuration) before any host is asked (a corrupt
// image changes nothing), then sends each host the layers it lacks and
// makes the image there.
func sendImage(ctx context.Context, out io.Writer, s *session, name string, layers []v1.Layer, diffIDs []v1.Hash) (imageLayers, error) {
	var il imageLayers
	if len(diffIDs) != len(layers) {
		return il, fmt.Errorf("image %s: its configuration lists %d layer digests for %d layers", name, len(diffIDs), len(layers))
	}
	digests := make([]string, len(layers))
	byDigest := map[string]v1.Layer{}
	for i, l := range layers {
		info, err := oci.ScanLayer(l, diffIDs[i])
		if err != nil {
			return il, fmt.Errorf("image %s: layer %d of %d: %w", name, i+1, len(layers), err)
		}
		digests[i] = info.DiffID
		byDigest[info.DiffID] = l
		il.Layers = append(il.Layers, store.Layer{Digest: info.DiffID, Size: info.Bytes})
		il.Size += info.Size
		il.Changes.SetID += info.SetID
		il.Changes.Devices += info.Devices
		il.Changes.Xattrs += info.Xattrs
		if info.Passwd != nil {
			il.Users = oci.ParsePasswd(info.Passwd)
		}
		if info.Group != nil {
			il.Groups = oci.ParseGroup(info.Group)
		}
	}
	hosts, err := hostList(ctx, s)
	if err != nil {
		return il, err
	}
	for _, h := range hosts {
		cl, err := s.agent(ctx, h.Name)
		if err != nil {
			return il, err
		}
		sent, bytes, err := sendLayers(ctx, cl, digests, byDigest)
		if err != nil {
			return il, fmt.Errorf("import %s to %s: %w", name, h.Name, err)
		}
		actx, cancel := context.WithTimeout(ctx, askTimeout)
		err = cl.PutImageLayers(actx, name, digests)
		cancel()
		if err != nil {
			return il, fmt.Errorf("import %s to %s: %w", name, h.Name, err)
		}
		if out != nil {
			fmt.Fprintf(out, "image %s imported on %s: %d of %d layers sent (%s), %d already there\n",
				name, h.Name, sent, len(digests), humanSize(bytes), len(digests)-sent)
		}
	}
	return il, nil
}

// sendLayers sends cl's host the layers of digests it lacks; it returns
// how many it sent and their bytes.
func sendLayers(ctx context.Context, cl *api.Client, digests []string, byDigest map[string]v1.Layer) (int, int64, error) {
	actx, cancel := context.WithTimeout(ctx, askTimeout)
	missing, err := cl.MissingLayers(actx, digests)
	cancel()
	if err != nil {
		return 0, 0, fmt.Errorf("ask which layers it has: %w", err)
	}
	var n int64
	for _, d := range missing {
		l, ok := byDigest[d]
		if !ok {
			return 0, 0, fmt.Errorf("the agent asks for layer %s, which is not the image's", d)
		}
		rep, err := putLayer(ctx, cl, d, l)
		if err != nil {
			return 0, 0, fmt.Errorf("layer %s: %w", d, err)
		}
		n += rep.Bytes
	}
	return len(missing), n, nil
}

func putLayer(ctx context.Context, cl *api.Client, d string, l v1.Layer) (api.ImportReply, error) {
	ctx, cancel := context.WithTimeout(ctx, layerTimeout)
	defer cancel()
	rc, err := l.Uncompressed()
	if err != nil {
		return api.ImportReply{}, err
	}
	defer rc.Close()
	return cl.PutLayer(ctx, d, rc)
}
