package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"time"

	"github.com/coat-project/coat/internal/api"
	"github.com/coat-project/coat/internal/authz"
	"github.com/coat-project/coat/internal/names"
	"github.com/coat-project/coat/internal/overlay"
	"github.com/coat-project/coat/internal/runtime"
	"github.com/coat-project/coat/internal/store"
	"github.com/coat-project/coat/internal/transfer"
)

func (a *Agent) routes() http.Handler {
	mux := http.NewServeMux()
	// Each route says who may call it (guard, authz.go); hosts get only
	// their part of the migrations recorded with them.
	admin := func(pattern string, h http.HandlerFunc) { mux.HandleFunc(pattern, a.guard(authz.AdminOnly, h)) }
	incoming := func(pattern string, h http.HandlerFunc) { mux.HandleFunc(pattern, a.guard(authz.Incoming, h)) }
	admin("POST /v1/containers", a.handleRun)
	admin("DELETE /v1/containers/{name}", named(a.handleRemove))
	admin("GET /v1/containers/{name}/logs", named(a.handleLogs))
	admin("POST /v1/containers/{name}/migrate", named(a.handleMigrate))
	admin("PUT /v1/images/{name}", a.handleImport)
	admin("DELETE /v1/images/{name}", a.handleImageRemove)
	admin("PUT /v1/images/{name}/layers", a.handleImageLayers)
	admin("POST /v1/layers/missing", a.handleMissingLayers)
	admin("PUT /v1/layers/{digest}", a.handleLayerImport)
	incoming("POST /v1/incoming/{name}/image", named(a.handleIncomingImage))
	incoming(preparePattern, named(a.handlePrepare))
	incoming("POST /v1/incoming/{name}/switch", named(a.handleSwitch))
	incoming("PUT /v1/incoming/{name}/data", named(a.handleData))
	incoming("POST /v1/incoming/{name}/restore", named(a.handleRestore))
	incoming("POST /v1/incoming/{name}/abort", named(a.handleAbort))
	mux.HandleFunc("POST /v1/tunnel/{name}/{kind}", a.guard(authz.Tunnel, named(a.handleTunnel)))
	mux.HandleFunc("GET /v1/outgoing/{name}/image", a.guard(authz.Image, named(a.handleImageSend)))
	mux.HandleFunc("GET /v1/outgoing/{name}/layers/{digest}", a.guard(authz.Image, named(a.handleLayerSend)))
	incoming("POST /v1/incoming/{name}/fetched", named(a.handleFetched))
	return a.authenticate(mux)
}

const preparePattern = "POST /v1/incoming/{name}/prepare"

// named refuses a request whose {name} is not a valid container name
// before h sees it: names become paths, namespaces and cgroups.
func named(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if err := names.Container(r.PathValue("name")); err != nil {
			httpError(w, badRequest("%v", err))
			return
		}
		h(w, r)
	}
}

// decode reads and validates a JSON request (see api.Decode).
func decode(r *http.Request, v api.Request) error {
	if err := api.Decode(r.Body, api.MaxRequest, v); err != nil {
		return badRequest("%v", err)
	}
	return nil
}

// httpError writes err with a status that fits it.
func httpError(w http.ResponseWriter, err error) {
	code := http.StatusInternalServerError
	switch {
	case errors.Is(err, store.ErrNotFound):
		code = http.StatusNotFound
	case errors.Is(err, store.ErrNameTaken), errors.Is(err, store.ErrIPTaken), errors.Is(err, store.ErrConflict), errors.Is(err, errBusy):
		code = http.StatusConflict
	case errors.Is(err, runtime.ErrLogNotFile):
		code = http.StatusConflict
	case errors.Is(err, errBadRequest), errors.Is(err, store.ErrNoFreeIP), errors.Is(err, transfer.ErrRefused):
		code = http.StatusBadRequest
	case errors.Is(err, authz.ErrForbidden):
		code = http.StatusForbidden
	case errors.Is(err, errBadCopy):
		code = http.StatusBadGateway
	}
	writeJSON(w, code, api.Error{Error: err.Error()})
}

var (
	errBadRequest = errors.New("bad request")
	errBusy       = errors.New("busy")
)

func badRequest(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{errBadRequest}, args...)...)
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func (a *Agent) handleRun(w http.ResponseWriter, r *http.Request) {
	var req api.RunRequest
	if err := decode(r, &req); err != nil {
		httpError(w, err)
		return
	}
	c, err := a.run(r.Context(), req)
	if err != nil {
		httpError(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, c)
}

// run validates, claims the name and IP, then builds the network and
// starts the container; on any failure it undoes everything it did.
func (a *Agent) run(ctx context.Context, req api.RunRequest) (store.Container, error) {
	if err := req.Validate(); err != nil {
		return store.Container{}, badRequest("%v", err)
	}
	if !a.rt.HasImage(req.Image) {
		return store.Container{}, badRequest("unknown image %q on host %s: get it first with `coat image pull`, `coat image load` or `coat image import`", req.Image, a.cfg.Name)
	}
	if req.IP != "" {
		if err := store.InSubnet(a.cfg.Subnet, net.ParseIP(req.IP)); err != nil {
			return store.Container{}, badRequest("%v", err)
		}
	}
	c, err := a.st.CreateContainer(ctx, store.Container{
		Name: req.Name, Host: a.cfg.Name, Image: req.Image, IP: req.IP,
		Args: req.Args, Env: req.Env, Cwd: req.Cwd, UID: req.UID, GID: req.GID, Status: store.StatusCreated, Created: now(),
	})
	if err != nil {
		return store.Container{}, err
	}
	// A recovery pass takes every name's lock for a moment: wait for it
	// (as migrate and rm do); a run refused here leaves no record behind.
	if !a.lockWait(c.Name, 5*time.Second) {
		_ = a.st.DeleteContainer(context.WithoutCancel(ctx), c.Name)
		return store.Container{}, fmt.Errorf("container %s: %w", c.Name, errBusy)
	}
	defer a.unlock(c.Name)
	if err := a.start(ctx, c); err != nil {
		a.teardown(context.WithoutCancel(ctx), c)
		_ = a.st.DeleteContainer(context.WithoutCancel(ctx), c.Name)
		return store.Container{}, fmt.Errorf("start %s: %w", c.Name, err)
	}
	c.Status = store.StatusRunning
	c, err = a.st.UpdateContainer(ctx, c)
	if err != nil {
		return store.Container{}, err
	}
	a.log.Info("container started", "container", c.Name, "ip", c.IP, "image", c.Image)
	return c, nil
}

func (a *Agent) start(ctx context.Context, c store.Container) error {
	ep, err := a.endpoint(c)
	if err != nil {
		return err
	}
	if err := overlay.CreateNetNS(ep.NetNS); err != nil {
		return err
	}
	if err := a.ov.AttachEndpoint(ep, true); err != nil {
		return err
	}
	if err := a.rt.Prepare(a.spec(c)); err != nil {
		return err
	}
	if err := a.rt.Start(ctx, c.Name); err != nil {
		return err
	}
	return overlay.GratuitousARP(ep.NetNS, "eth0", ep.Addr.IP, ep.MAC, 1)
}

// teardown removes the container's process, rootfs and network from this
// host. Errors are logged: it runs on cleanup paths.
func (a *Agent) teardown(ctx context.Context, c store.Container) {
	if err := a.rt.Remove(ctx, c.Name); err != nil {
		a.log.Warn("remove container files", "container", c.Name, "err", err)
	}
	if err := a.ov.DetachEndpoint(vethName(c.Name)); err != nil {
		a.log.Warn("detach endpoint", "container", c.Name, "err", err)
	}
	if err := overlay.DeleteNetNS(a.netnsPath(c.Name)); err != nil {
		a.log.Warn("delete netns", "container", c.Name, "err", err)
	}
}

func (a *Agent) handleRemove(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	c, err := a.st.Container(r.Context(), name)
	if err != nil {
		httpError(w, err)
		return
	}
	if c.Host != a.cfg.Name {
		httpError(w, badRequest("container %s runs on %s, not on %s", name, c.Host, a.cfg.Name))
		return
	}
	if c.Status == store.StatusMigrating || !a.lockWait(name, 5*time.Second) {
		httpError(w, fmt.Errorf("container %s is migrating; try again when it is done: %w", name, errBusy))
		return
	}
	defer a.unlock(name)
	a.teardown(r.Context(), c)
	// Images kept by a failed rollback hold its memory: they go with it.
	for _, p := range a.checkpointImages(name) {
		if err := os.RemoveAll(p); err != nil {
			a.log.Warn("remove checkpoint image", "container", name, "err", err)
		}
	}
	if err := a.st.DeleteContainer(r.Context(), name); err != nil {
		httpError(w, err)
		return
	}
	a.log.Info("container removed", "container", name)
	w.WriteHeader(http.StatusNoContent)
}

// handleLogs returns the last runtime.LogTail bytes of the container's
// output; the X-Coat-Log-Skipped header says how many came before. The
// log is opened without following links (see runtime.OpenLog).
func (a *Agent) handleLogs(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	from := int64(-1) // the tail
	if v := r.URL.Query().Get("from"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			httpError(w, badRequest("from=%q: want a byte offset (0 or more)", v))
			return
		}
		from = n
	}
	l, err := a.rt.OpenLogAt(name, from)
	if errors.Is(err, os.ErrNotExist) {
		if _, serr := a.st.Container(r.Context(), name); serr != nil {
			httpError(w, serr)
			return
		}
		w.WriteHeader(http.StatusOK) // no output yet
		return
	}
	if err != nil {
		httpError(w, err)
		return
	}
	defer l.Close()
	w.Header().Set("Content-Type", "text/plain")
	w.Header().Set(api.LogSkippedHeader, strconv.FormatInt(l.Skipped, 10))
	w.Header().Set(api.LogStartHeader, strconv.FormatInt(l.Start, 10))
	_, _ = io.Copy(w, l.Tail())
}
