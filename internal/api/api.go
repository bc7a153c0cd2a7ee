// Package api is the agent's HTTP API over mutual TLS: its request and
// reply types, and a small typed client used by the CLI and by agents
// talking to each other during a migration.
package api

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/coat-project/coat/internal/overlay"
	"github.com/coat-project/coat/internal/store"
)

// RunRequest asks an agent to run a container.
type RunRequest struct {
	Name  string   `json:"name"`
	Image string   `json:"image"`
	IP    string   `json:"ip,omitempty"`
	Env   []string `json:"env,omitempty"`
	Args  []string `json:"args"`
	// Cwd is the working directory ("" is /); UID and GID the process's
	// user and group (0 is root).
	Cwd string `json:"cwd,omitempty"`
	UID uint32 `json:"uid,omitempty"`
	GID uint32 `json:"gid,omitempty"`
}

// MigrateRequest asks a container's agent to move it.
type MigrateRequest struct {
	To string `json:"to"`
	// Strategy: auto (default), stop-and-copy, post-copy or pre-copy.
	Strategy string `json:"strategy,omitempty"`
	NoTCP    bool   `json:"no_tcp,omitempty"`
	// FailRestore makes the destination's restore fail on purpose, to
	// exercise rollback (used by tests and `coat migrate --fail-restore`).
	FailRestore bool `json:"fail_restore,omitempty"`
	// NoHold turns off holding the clients' packets at the destination
	// during the freeze (to measure what holding buys).
	NoHold bool `json:"no_hold,omitempty"`
	// Reference runs the hand-run path of the paper's artifact instead:
	// checkpoint to a tar file, copy the file, unpack it, restore; each
	// step waits for the previous one and nothing is held (for the bench).
	Reference bool `json:"reference,omitempty"`
	// Slow uses runc's stock checkpoint (CRIU freezes, cgroup properties
	// saved and restored), to measure what the fast path saves.
	Slow bool `json:"slow,omitempty"`
	// CrashAfter makes the coordinating agent exit right after this phase
	// (a test hook honoured only by agents started with COAT_TEST_HOOKS=1),
	// to exercise recovery of a migration whose coordinator died; "frozen"
	// exits during the dump, once the container is frozen.
	CrashAfter string `json:"crash_after,omitempty"`
	// FailResume also makes the source's own restore fail, so that the
	// rollback fails too (a test hook honoured only by agents started with
	// COAT_TEST_HOOKS=1: it destroys the container's checkpoint).
	FailResume bool `json:"fail_resume,omitempty"`
	// TimeoutMS bounds the whole migration and FreezeBudgetMS the time
	// the container may stay frozen (0: derived from the strategy and the
	// container's memory). When either runs out the migration rolls back.
	TimeoutMS      int64 `json:"timeout_ms,omitempty"`
	FreezeBudgetMS int64 `json:"freeze_budget_ms,omitempty"`
	// Group names every container of a group move (the one in the path
	// among them, all on the same host): they are frozen together, and
	// the destination restores them all before it commits them in one
	// transaction and lets them run together; one failing fails all.
	Group []string `json:"group,omitempty"`
	// LoseRestoreReply drops the destination's answer to the restore
	// (test hook, COAT_TEST_HOOKS=1): the source must learn the outcome
	// from the record.
	LoseRestoreReply bool `json:"lose_restore_reply,omitempty"`
	// DestCrashBeforeCommit makes the destination's agent exit after its
	// restore, before the commit (test hook, COAT_TEST_HOOKS=1).
	DestCrashBeforeCommit bool `json:"dest_crash_before_commit,omitempty"`
}

// MigrateResult is what a migration reports.
type MigrateResult struct {
	Name         string  `json:"name"`
	From         string  `json:"from"`
	To           string  `json:"to"`
	Mode         string  `json:"mode"` // "coat" or "traditional"
	Held         bool    `json:"held"` // clients' packets held during the freeze
	CheckpointMS float64 `json:"checkpoint_ms"`
	TransferMS   float64 `json:"transfer_ms"`
	RestoreMS    float64 `json:"restore_ms"`
	TotalMS      float64 `json:"total_ms"`
	DowntimeMS   float64 `json:"downtime_ms"`
	Bytes        int64   `json:"bytes"`
	ImageBytes   int64   `json:"image_bytes"`
	RootfsBytes  int64   `json:"rootfs_bytes"`
	// Strategy is how memory moved, and StrategyReason why (auto).
	Strategy       string `json:"strategy"`
	StrategyReason string `json:"strategy_reason"`
	// MemoryBytes is the container's memory at the freeze.
	MemoryBytes int64 `json:"memory_bytes"`
	// LazyMS is from the restore until the last page arrived (post-copy;
	// 0 otherwise), PagesOnDemand the page faults served meanwhile.
	LazyMS        float64 `json:"lazy_ms"`
	PagesOnDemand int     `json:"pages_on_demand"`
	// TimeoutMS and FreezeBudgetMS are the budgets the migration ran
	// under; ReplyLost says the destination's answer to the restore was
	// lost and the record told the source it had committed.
	TimeoutMS      float64 `json:"timeout_ms"`
	FreezeBudgetMS float64 `json:"freeze_budget_ms"`
	ReplyLost      bool    `json:"reply_lost,omitempty"`
	// ImageFetchMS and ImageFetchBytes are the time and (compressed)
	// bytes the destination took to copy the container's image, which it
	// lacked, before the freeze (0 when it had the image), from
	// ImageFetchedFrom: the source host's name, or the registry
	// reference it was pulled from. ImageRegistryError says why the
	// registry was passed over. ImageName is the container's image.
	ImageName          string  `json:"image_name"`
	ImageFetchMS       float64 `json:"image_fetch_ms"`
	ImageFetchBytes    int64   `json:"image_fetch_bytes"`
	ImageFetchedFrom   string  `json:"image_fetched_from,omitempty"`
	ImageRegistryError string  `json:"image_registry_error,omitempty"`
}

// Progress is one line of a migration's streamed reply: a phase that
// started or ended, then either Result or Error.
type Progress struct {
	// Name is the container a group move's line is about.
	Name       string  `json:"name,omitempty"`
	Phase      string  `json:"phase,omitempty"`
	DurationMS float64 `json:"duration_ms,omitempty"`
	// A line without a phase is a tick, sent every second once a
	// migration has taken one: the phase under way (Current), the bytes
	// streamed to the destination so far and the bytes expected (the
	// container's memory: an estimate of its image), and the time since
	// the migration started.
	Current       string  `json:"current,omitempty"`
	BytesMoved    int64   `json:"bytes_moved,omitempty"`
	BytesExpected int64   `json:"bytes_expected,omitempty"`
	ElapsedMS     float64 `json:"elapsed_ms,omitempty"`
	// Migration is the migration's id, as in the agents' logs.
	Migration string         `json:"migration,omitempty"`
	Done      bool           `json:"done,omitempty"`
	Result    *MigrateResult `json:"result,omitempty"`
	// Results: a group move's, one per container.
	Results []MigrateResult `json:"results,omitempty"`
	Error   string          `json:"error,omitempty"`
}

// PrepareRequest tells the destination to get ready for the container
// named in the path. It carries no container record: the destination reads
// the record (IP, MAC, image, command) from the store, and prepares only a
// container the store says is migrating to it.
type PrepareRequest struct {
	// Hold queues inbound frames at the destination from the switch until
	// the restore is done.
	Hold bool `json:"hold,omitempty"`
}

// SwitchRequest tells the destination that the source has cut the
// container off: it takes over the container's MAC on the overlay (held
// traffic queues there) and learns the container's neighbours.
type SwitchRequest struct {
	Neighbours []overlay.Neighbour `json:"neighbours,omitempty"`
}

// RestoreRequest tells the destination to restore what it received.
type RestoreRequest struct {
	// Lazy restores post-copy: memory is fetched from the source's page
	// tunnel.
	Lazy        bool   `json:"lazy,omitempty"`
	Name        string `json:"name"`
	NoTCP       bool   `json:"no_tcp,omitempty"`
	FailRestore bool   `json:"fail_restore,omitempty"`
	Slow        bool   `json:"slow,omitempty"`
	// Replay holds the Ethernet frames the source held for the container
	// after its freeze, oldest first: the destination queues them before
	// its own (see internal/overlay's replay).
	Replay [][]byte `json:"replay,omitempty"`
	// Group and GroupSize: this restore belongs to a group move of
	// GroupSize containers (see MigrateRequest.Group).
	Group     string `json:"group,omitempty"`
	GroupSize int    `json:"group_size,omitempty"`
	// CrashBeforeCommit: see MigrateRequest.DestCrashBeforeCommit.
	CrashBeforeCommit bool `json:"crash_before_commit,omitempty"`
	// Revision is the container record's revision after the source
	// recorded the switch (0: it did not): the destination's commit
	// swaps against it. A wrong one only costs a read.
	Revision int64 `json:"revision,omitempty"`
}

// RestoreReply reports the destination's restore.
type RestoreReply struct {
	RestoreMS float64 `json:"restore_ms"`
}

// FetchReply says how a post-copy's memory arrived on the destination.
type FetchReply struct {
	LazyMS        float64 `json:"lazy_ms"`
	PagesOnDemand int     `json:"pages_on_demand"`
	Bytes         int64   `json:"bytes"`
}

// ImportReply is what an agent received of an image import: the digest
// ("sha256:HEX") and length of the tar stream.
type ImportReply struct {
	Digest string `json:"digest"`
	Bytes  int64  `json:"bytes"`
}

// ImageReply is the destination's image-ready step: whether it copied
// the container's image (it lacked it), from where (the source host's
// name, or the registry reference it was pulled from), how many bytes
// came (compressed) and how long the copy took. RegistryError says why
// the registry was passed over for the source host.
type ImageReply struct {
	Copied        bool    `json:"copied"`
	From          string  `json:"from,omitempty"`
	Bytes         int64   `json:"bytes"`
	MS            float64 `json:"ms"`
	RegistryError string  `json:"registry_error,omitempty"`
}

// Error is the JSON body of a failed request.
type Error struct {
	Error string `json:"error"`
}

// Client talks to one agent.
type Client struct {
	Base string // https://host:port
	HTTP *http.Client
}

// StatusError is a non-2xx reply.
type StatusError struct {
	Code int
	Msg  string
}

func (e *StatusError) Error() string { return e.Msg }

func (c *Client) do(ctx context.Context, method, path string, body io.Reader, ctype string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, c.Base+path, body)
	if err != nil {
		return nil, err
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return nil, fmt.Errorf("agent %s: %w", c.Base, err)
	}
	if resp.StatusCode/100 != 2 {
		defer resp.Body.Close()
		var e Error
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		if json.Unmarshal(b, &e) != nil || e.Error == "" {
			e.Error = fmt.Sprintf("%s %s: %s", method, path, bytes.TrimSpace(b))
		}
		return nil, &StatusError{Code: resp.StatusCode, Msg: e.Error}
	}
	return resp, nil
}

// JSON sends in (if non-nil) as JSON and decodes the reply into out.
func (c *Client) JSON(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	resp, err := c.do(ctx, method, path, body, "application/json")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		return nil
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

// Stream sends body and returns the reply body for the caller to read.
func (c *Client) Stream(ctx context.Context, method, path string, body io.Reader, ctype string) (io.ReadCloser, error) {
	resp, err := c.do(ctx, method, path, body, ctype)
	if err != nil {
		return nil, err
	}
	return resp.Body, nil
}

// Run asks the agent to run a container.
func (c *Client) Run(ctx context.Context, r RunRequest) (store.Container, error) {
	var out store.Container
	err := c.JSON(ctx, http.MethodPost, "/v1/containers", r, &out)
	return out, err
}

// Remove deletes a container.
func (c *Client) Remove(ctx context.Context, name string) error {
	return c.JSON(ctx, http.MethodDelete, "/v1/containers/"+url.PathEscape(name), nil, nil)
}

// LogSkippedHeader of a logs reply counts the bytes of output before the
// tail returned (an agent returns at most the last MiB).
const LogSkippedHeader = "X-Coat-Log-Skipped"

// LogStartHeader of a logs reply is the offset in the container's output
// of the first byte returned.
const LogStartHeader = "X-Coat-Log-Start"

// LogChunk is a part of a container's output: from offset Start, with
// Skipped bytes before it (from the offset asked for) not returned.
type LogChunk struct {
	Body           io.ReadCloser
	Start, Skipped int64
}

// LogsFrom returns the container's output from byte offset from (at most
// a MiB of it; less if more than a MiB came since), for following it; a
// negative from is its tail, as Logs.
func (c *Client) LogsFrom(ctx context.Context, name string, from int64) (LogChunk, error) {
	path := "/v1/containers/" + url.PathEscape(name) + "/logs"
	if from >= 0 {
		path += "?from=" + strconv.FormatInt(from, 10)
	}
	resp, err := c.do(ctx, http.MethodGet, path, nil, "")
	if err != nil {
		return LogChunk{}, err
	}
	ch := LogChunk{Body: resp.Body, Start: from}
	if v := resp.Header.Get(LogStartHeader); v != "" {
		ch.Start, _ = strconv.ParseInt(v, 10, 64)
	}
	ch.Skipped, _ = strconv.ParseInt(resp.Header.Get(LogSkippedHeader), 10, 64)
	return ch, nil
}

// Logs returns the tail of the container's output (at most the last MiB)
// and how many bytes came before it.
func (c *Client) Logs(ctx context.Context, name string) (io.ReadCloser, int64, error) {
	resp, err := c.do(ctx, http.MethodGet, "/v1/containers/"+url.PathEscape(name)+"/logs", nil, "")
	if err != nil {
		return nil, 0, err
	}
	skipped, _ := strconv.ParseInt(resp.Header.Get(LogSkippedHeader), 10, 64)
	return resp.Body, skipped, nil
}

// ImportImage sends a rootfs as a tar stream (names under rootfs/). With
// a digest ("sha256:HEX") the agent refuses a stream without it.
func (c *Client) ImportImage(ctx context.Context, name, digest string, tarStream io.Reader) (ImportReply, error) {
	path := "/v1/images/" + url.PathEscape(name)
	if digest != "" {
		path += "?digest=" + url.QueryEscape(digest)
	}
	var rep ImportReply
	rc, err := c.Stream(ctx, http.MethodPut, path, tarStream, "application/x-tar")
	if err != nil {
		return rep, err
	}
	defer rc.Close()
	// An older agent answers 204, with no body (and keeps no stream).
	if err := json.NewDecoder(rc).Decode(&rep); err != nil && !errors.Is(err, io.EOF) {
		return rep, fmt.Errorf("import %s: the agent's answer: %w", name, err)
	}
	return rep, nil
}

// Layers is a list of layer digests (diffIDs, "sha256:HEX"), bottom
// first: the layers asked about, those missing, or an image's.
type Layers struct {
	Layers []string `json:"layers"`
}

// MissingLayers returns those of layers the agent's host lacks.
func (c *Client) MissingLayers(ctx context.Context, layers []string) ([]string, error) {
	var rep Layers
	if err := c.JSON(ctx, http.MethodPost, "/v1/layers/missing", Layers{Layers: layers}, &rep); err != nil {
		return nil, err
	}
	return rep.Layers, nil
}

// PutLayer sends a layer's uncompressed tar stream; the agent keeps it
// only if it hashes to diffID.
func (c *Client) PutLayer(ctx context.Context, diffID string, tarStream io.Reader) (ImportReply, error) {
	var rep ImportReply
	rc, err := c.Stream(ctx, http.MethodPut, "/v1/layers/"+url.PathEscape(diffID), tarStream, "application/x-tar")
	if err != nil {
		return rep, err
	}
	defer rc.Close()
	if err := json.NewDecoder(rc).Decode(&rep); err != nil {
		return rep, fmt.Errorf("layer %s: the agent's answer: %w", diffID, err)
	}
	return rep, nil
}

// PutImageLayers makes name, on the agent's host, the image of layers
// (bottom first), all of which the host must hold.
func (c *Client) PutImageLayers(ctx context.Context, name string, layers []string) error {
	return c.JSON(ctx, http.MethodPut, "/v1/images/"+url.PathEscape(name)+"/layers", Layers{Layers: layers}, nil)
}

// RemoveImage deletes an image from the agent's host; refused (409)
// while a container uses it.
func (c *Client) RemoveImage(ctx context.Context, name string) error {
	return c.JSON(ctx, http.MethodDelete, "/v1/images/"+url.PathEscape(name), nil, nil)
}

// Migrate starts a migration on the container's current agent and calls
// onProgress for each phase; it returns the final result.
func (c *Client) Migrate(ctx context.Context, name string, r MigrateRequest, onProgress func(Progress)) (*MigrateResult, error) {
	p, err := c.migrate(ctx, name, r, onProgress, func(p Progress) bool { return p.Result != nil })
	if err != nil {
		return nil, err
	}
	return p.Result, nil
}

// MigrateGroup moves the containers of r.Group together; name is the one
// whose path the request goes to (any of them).
func (c *Client) MigrateGroup(ctx context.Context, name string, r MigrateRequest, onProgress func(Progress)) ([]MigrateResult, error) {
	p, err := c.migrate(ctx, name, r, onProgress, func(p Progress) bool { return p.Done })
	if err != nil {
		return nil, err
	}
	return p.Results, nil
}

// migrate posts a migration and reads its progress stream: every line
// goes to onProgress until an error or the line last says it is the last.
func (c *Client) migrate(ctx context.Context, name string, r MigrateRequest, onProgress func(Progress), last func(Progress) bool) (Progress, error) {
	b, _ := json.Marshal(r)
	rc, err := c.Stream(ctx, http.MethodPost, "/v1/containers/"+url.PathEscape(name)+"/migrate", bytes.NewReader(b), "application/json")
	if err != nil {
		return Progress{}, err
	}
	defer rc.Close()
	sc := bufio.NewScanner(rc)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var p Progress
		if err := json.Unmarshal(sc.Bytes(), &p); err != nil {
			return Progress{}, fmt.Errorf("bad progress line %q: %w", sc.Text(), err)
		}
		if p.Error != "" {
			return Progress{}, errors.New(p.Error)
		}
		if last(p) {
			return p, nil
		}
		if onProgress != nil {
			onProgress(p)
		}
	}
	if err := sc.Err(); err != nil {
		return Progress{}, fmt.Errorf("migration stream: %w", err)
	}
	return Progress{}, errors.New("migration stream ended without a result: check the source agent's log")
}

// Ms converts a duration to float milliseconds.
func Ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
