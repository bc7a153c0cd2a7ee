package agent

import (
	"archive/tar"
	"bufio"
	"context"
	"errors"
	"io"
	"net/http"
	"sync/atomic"

	"github.com/klauspost/compress/zstd"

	"github.com/coat-project/coat/internal/transfer"
)

// imageStream is the checkpoint image on its way to the destination: the
// memory files as CRIU writes them (transfer.Follow), then the rest of the
// image and the rootfs upper layer, as one tar stream over mutual TLS,
// zstd-compressed on a slow link.
type imageStream struct {
	finished chan struct{} // closed when the dump ended
	dumpErr  error
	done     chan error // the stream's end
}

// compressBelow is the link rate under which the stream is compressed:
// zstd's fastest level packs far faster than such a link moves bytes,
// and costs a fast link more CPU time than it saves there.
const compressBelow = 500e6

func (o *outgoing) startStream(ctx context.Context) {
	s := &imageStream{finished: make(chan struct{}), done: make(chan error, 1)}
	o.stream = s
	path := o.incoming("data")
	zip := false
	if r := linkRate(o.a.cfg.LinkRate, o.dest); r > 0 && r < compressBelow {
		zip, path = true, path+"?zstd=1"
	}
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(o.packStream(pw, zip)) }()
	go func() {
		rc, err := o.peer.Stream(ctx, http.MethodPut, path, &countingReader{r: pr, n: &o.sent}, "application/x-tar")
		pr.CloseWithError(errors.New("transfer ended"))
		if err == nil {
			rc.Close()
		}
		s.done <- err
	}()
}

// dumped says the dump ended (err: it failed, and the stream is cut).
func (s *imageStream) dumped(err error) {
	s.dumpErr = err
	close(s.finished)
}

func (o *outgoing) packStream(w io.Writer, zip bool) error {
	if zip {
		zw, err := zstd.NewWriter(w, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1))
		if err != nil {
			return err
		}
		defer zw.Close()
		w = zw
	}
	// Small writes (tar headers, small files) gather here rather than
	// each becoming a chunk, a TLS record and a packet of its own.
	bw := bufio.NewWriterSize(w, 64<<10)
	tw := tar.NewWriter(bw)
	n, err := transfer.Follow(tw, bw.Flush, o.ckptDir, "checkpoint/", o.stream.finished)
	o.imageBytes = n
	if err == nil && o.stream.dumpErr != nil {
		err = errors.New("checkpoint failed")
	}
	if err != nil {
		return err
	}
	if err := o.packUpper(tw); err != nil {
		return err
	}
	if err := bw.Flush(); err != nil {
		return err
	}
	if zw, ok := w.(*zstd.Encoder); ok {
		return zw.Close()
	}
	return nil
}

// countingReader counts the bytes read through it (what was streamed).
type countingReader struct {
	r io.Reader
	n *atomic.Int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	return n, err
}
