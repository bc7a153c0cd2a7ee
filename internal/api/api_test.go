package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/coat-project/coat/internal/store"
)

// newClient serves h over TLS (httptest's own CA) and returns a Client for it.
func newClient(t *testing.T, h http.HandlerFunc) *Client {
	t.Helper()
	srv := httptest.NewTLSServer(h)
	t.Cleanup(srv.Close)
	return &Client{Base: srv.URL, HTTP: srv.Client()}
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return c
}

// ndjson writes lines one by one, flushing each like a streaming agent.
func ndjson(lines ...string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/x-ndjson")
		for _, l := range lines {
			fmt.Fprintln(w, l)
			w.(http.Flusher).Flush()
		}
	}
}

func TestMigrateStreamsProgressAndResult(t *testing.T) {
	var gotReq MigrateRequest
	var gotPath, gotMethod, gotType string
	c := newClient(t, func(w http.ResponseWriter, r *http.Request) {
		gotPath, gotMethod, gotType = r.URL.EscapedPath(), r.Method, r.Header.Get("Content-Type")
		if err := json.NewDecoder(r.Body).Decode(&gotReq); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		ndjson(
			`{"phase":"locked"}`,
			`{"phase":"checkpointed","duration_ms":12.5}`,
			`{"phase":"restored","duration_ms":3,"done":true}`,
			`{"result":{"name":"web","from":"edge-1","to":"edge-2","mode":"coat","downtime_ms":41.5,"bytes":1048576}}`,
			`{"phase":"after-the-result"}`,
		)(w, r)
	})
	var got []Progress
	res, err := c.Migrate(ctx(t), "web", MigrateRequest{To: "edge-2", NoTCP: true}, func(p Progress) { got = append(got, p) })
	if err != nil {
		t.Fatalf("Migrate: %v", err)
	}
	if gotMethod != http.MethodPost || gotPath != "/v1/containers/web/migrate" || gotType != "application/json" {
		t.Errorf("request %s %s (%s)", gotMethod, gotPath, gotType)
	}
	if gotReq.To != "edge-2" || !gotReq.NoTCP || gotReq.FailRestore {
		t.Errorf("server got %+v", gotReq)
	}
	if res == nil || res.Name != "web" || res.To != "edge-2" || res.DowntimeMS != 41.5 || res.Bytes != 1<<20 {
		t.Fatalf("result = %+v", res)
	}
	want := []Progress{{Phase: "locked"}, {Phase: "checkpointed", DurationMS: 12.5}, {Phase: "restored", DurationMS: 3, Done: true}}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("progress = %+v, want %+v", got, want)
	}
}

func TestMigrateErrors(t *testing.T) {
	tests := []struct {
		name     string
		h        http.HandlerFunc
		want     string // substring of the error
		progress int
		status   int // StatusError code, 0 if none
	}{
		{"error line", ndjson(`{"phase":"locked"}`, `{"phase":"prepared"}`,
			`{"error":"restore on destination: boom; rolled back: the container runs again on the source"}`),
			"restore on destination: boom; rolled back", 2, 0},
		{"error line ends the stream", ndjson(`{"error":"checkpoint: criu failed"}`, `{"result":{"name":"web"}}`),
			"checkpoint: criu failed", 0, 0},
		{"no result", ndjson(`{"phase":"locked"}`), "ended without a result", 1, 0},
		{"empty stream", ndjson(), "ended without a result", 0, 0},
		{"bad line", ndjson(`{"phase":"locked"}`, `not json`), `bad progress line "not json"`, 1, 0},
		{"busy", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusConflict)
			fmt.Fprint(w, `{"error":"container web: busy"}`)
		}, "container web: busy", 0, http.StatusConflict},
		{"not found", func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(http.StatusNotFound)
			fmt.Fprint(w, `{"error":"container \"web\": not found"}`)
		}, `container "web": not found`, 0, http.StatusNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newClient(t, tt.h)
			n := 0
			res, err := c.Migrate(ctx(t), "web", MigrateRequest{To: "edge-2"}, func(Progress) { n++ })
			if err == nil {
				t.Fatalf("Migrate succeeded with %+v", res)
			}
			if res != nil {
				t.Errorf("result %+v returned with error", res)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("err = %q, want it to contain %q", err, tt.want)
			}
			if n != tt.progress {
				t.Errorf("%d progress callbacks, want %d", n, tt.progress)
			}
			var se *StatusError
			if got := errors.As(err, &se); got != (tt.status != 0) {
				t.Errorf("StatusError = %v (%v), want status %d", got, err, tt.status)
			} else if got && se.Code != tt.status {
				t.Errorf("status code %d, want %d", se.Code, tt.status)
			}
		})
	}
}

func TestMigrateNilProgress(t *testing.T) {
	c := newClient(t, ndjson(`{"phase":"locked"}`, `{"result":{"name":"web"}}`))
	res, err := c.Migrate(ctx(t), "web", MigrateRequest{To: "edge-2"}, nil)
	if err != nil || res.Name != "web" {
		t.Fatalf("Migrate = %+v, %v", res, err)
	}
}

func TestStatusErrors(t *testing.T) {
	tests := []struct {
		name string
		code int
		body string
		want string
	}{
		{"json error", http.StatusBadRequest, `{"error":"invalid name \"A\""}`, `invalid name "A"`},
		{"plain text", http.StatusInternalServerError, "something broke\n", "POST /v1/containers: something broke"},
		{"json without error", http.StatusForbidden, `{"message":"nope"}`, `POST /v1/containers: {"message":"nope"}`},
		{"empty body", http.StatusBadGateway, "", "POST /v1/containers: "},
		{"redirect is not success", http.StatusMultipleChoices, `{"error":"moved"}`, "moved"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newClient(t, func(w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(tt.code)
				io.WriteString(w, tt.body)
			})
			_, err := c.Run(ctx(t), RunRequest{Name: "A", Image: "img", Args: []string{"sh"}})
			var se *StatusError
			if !errors.As(err, &se) {
				t.Fatalf("err = %v (%T), want *StatusError", err, err)
			}
			if se.Code != tt.code {
				t.Errorf("code = %d, want %d", se.Code, tt.code)
			}
			if se.Error() != tt.want {
				t.Errorf("message = %q, want %q", se.Error(), tt.want)
			}
		})
	}
}

func TestRunRemoveLogs(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/containers", func(w http.ResponseWriter, r *http.Request) {
		var req RunRequest
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		json.NewEncoder(w).Encode(store.Container{Name: req.Name, Image: req.Image, Args: req.Args, IP: "10.202.0.10", Status: store.StatusRunning})
	})
	var removed string
	mux.HandleFunc("DELETE /v1/containers/{name}", func(w http.ResponseWriter, r *http.Request) {
		removed = r.PathValue("name")
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("GET /v1/containers/{name}/logs", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set(LogSkippedHeader, "42")
		fmt.Fprintf(w, "log of %s\n", r.PathValue("name"))
	})
	c := newClient(t, mux.ServeHTTP)

	got, err := c.Run(ctx(t), RunRequest{Name: "web", Image: "alpine", Args: []string{"sleep", "1"}})
	if err != nil {
		t.Fatal(err)
	}
	if got.Name != "web" || got.IP != "10.202.0.10" || got.Status != store.StatusRunning || len(got.Args) != 2 {
		t.Errorf("Run = %+v", got)
	}
	if err := c.Remove(ctx(t), "web"); err != nil || removed != "web" {
		t.Errorf("Remove: %v (server saw %q)", err, removed)
	}
	rc, skipped, err := c.Logs(ctx(t), "web")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(rc)
	rc.Close()
	if string(b) != "log of web\n" || skipped != 42 {
		t.Errorf("Logs = %q, skipped %d", b, skipped)
	}
	// Names are escaped into one path segment.
	if err := c.Remove(ctx(t), "a/b"); err != nil || removed != "a/b" {
		t.Errorf("Remove(a/b): %v (server saw %q)", err, removed)
	}
}

func TestUnreachableAgent(t *testing.T) {
	srv := httptest.NewTLSServer(http.NotFoundHandler())
	c := &Client{Base: srv.URL, HTTP: srv.Client()}
	srv.Close()
	err := c.JSON(ctx(t), http.MethodGet, "/v1/containers", nil, nil)
	var se *StatusError
	if err == nil || errors.As(err, &se) || !strings.Contains(err.Error(), "agent "+srv.URL) {
		t.Errorf("err = %v, want a transport error naming the agent", err)
	}
}

func TestMs(t *testing.T) {
	for d, want := range map[time.Duration]float64{0: 0, time.Millisecond: 1, 1500 * time.Microsecond: 1.5, 2 * time.Second: 2000, 1234567 * time.Nanosecond: 1.234} {
		if got := Ms(d); got != want {
			t.Errorf("Ms(%v) = %v, want %v", d, got, want)
		}
	}
}
