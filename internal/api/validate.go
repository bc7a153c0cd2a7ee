package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"

	"github.com/coat-project/coat/internal/names"
)

// MaxRequest is the largest JSON request body an agent reads: a restore
// request carries the frames held during a freeze.
const MaxRequest = 64 << 20

// Request is a JSON request body that can check itself.
type Request interface {
	// Validate checks the request and puts it in canonical form (e.g. the
	// image reference); the error says what is allowed.
	Validate() error
}

// Decode reads one JSON request of at most max bytes from r into v and
// validates it. Nothing is acted on before it returns nil.
func Decode(r io.Reader, max int64, v Request) error {
	b, err := io.ReadAll(io.LimitReader(r, max+1))
	if err != nil {
		return fmt.Errorf("read request: %w", err)
	}
	if int64(len(b)) > max {
		return fmt.Errorf("request larger than %d bytes", max)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("decode request: %v: send one JSON object", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return errors.New("decode request: data after the JSON object: send one JSON object")
	}
	return v.Validate()
}

// Validate checks the container and image names, the command, the
// environment and the address.
func (r *RunRequest) Validate() error {
	if err := names.Container(r.Name); err != nil {
		return err
	}
	im, err := names.ParseImage(r.Image)
	if err != nil {
		return err
	}
	r.Image = im.String()
	if len(r.Args) == 0 {
		return errors.New("no command given: put it after `--`")
	}
	for _, a := range r.Args {
		if strings.IndexByte(a, 0) >= 0 {
			return fmt.Errorf("argument %q holds a NUL byte: pass text only", a)
		}
	}
	for _, e := range r.Env {
		if k, _, ok := strings.Cut(e, "="); !ok || k == "" || strings.IndexByte(e, 0) >= 0 {
			return fmt.Errorf("--env %q: want KEY=VALUE (no NUL bytes)", e)
		}
	}
	if r.Cwd != "" && (!strings.HasPrefix(r.Cwd, "/") || strings.IndexByte(r.Cwd, 0) >= 0) {
		return fmt.Errorf("working directory %q: want an absolute path, e.g. /srv", r.Cwd)
	}
	if r.IP != "" && net.ParseIP(r.IP).To4() == nil {
		return fmt.Errorf("invalid ip %q: want an IPv4 address, e.g. 10.202.0.20, or none to get one allocated", r.IP)
	}
	return nil
}

// Validate checks the destination host's name.
func (r *MigrateRequest) Validate() error {
	if err := names.Host(r.To); err != nil {
		return err
	}
	if len(r.Group) > 16 {
		return fmt.Errorf("a group move takes at most 16 containers, not %d", len(r.Group))
	}
	seen := map[string]bool{}
	for _, n := range r.Group {
		if err := names.Container(n); err != nil {
			return err
		}
		if seen[n] {
			return fmt.Errorf("container %s is named twice in the group", n)
		}
		seen[n] = true
	}
	return nil
}

// Validate accepts any PrepareRequest: it names nothing (the destination
// reads the container from the store).
func (r *PrepareRequest) Validate() error { return nil }

// Validate checks the switch request (any neighbour list will do: bad
// entries are skipped where they are applied).
func (r *SwitchRequest) Validate() error { return nil }

// Validate checks the container's name, if given.
func (r *RestoreRequest) Validate() error {
	if r.Name != "" {
		return names.Container(r.Name)
	}
	return nil
}
