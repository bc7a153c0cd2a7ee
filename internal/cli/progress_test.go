package cli

import (
	"bytes"
	"testing"

	"github.com/coat-project/coat/internal/api"
)

func TestProgressLine(t *testing.T) {
	for _, tc := range []struct {
		p    api.Progress
		want string
	}{
		{api.Progress{Current: "transferring", BytesMoved: 3 << 20, BytesExpected: 12 << 20, ElapsedMS: 2100},
			"  ... transferring  3.0 MiB of ~12.0 MiB (25%) moved, 2.1 s"},
		{api.Progress{Current: "checkpointing", ElapsedMS: 1000}, "  ... checkpointing 0 B moved, 1.0 s"},
		{api.Progress{BytesMoved: 1536, ElapsedMS: 1500}, "  ... migrating     1.5 KiB moved, 1.5 s"},
	} {
		if got := progressLine(tc.p); got != tc.want {
			t.Errorf("progressLine(%+v)\\n got %q\\nwant %q", tc.p, got, tc.want)
		}
	}
	if isTerminal(&bytes.Buffer{}) {
		t.Error("a buffer is not a terminal: --json and piped output get no ticks")
	}
}

// The human output says when the image was copied, and why not from its
// registry; nothing when the destination had it.
func TestImageLine(t *testing.T) {
	if got := imageLine(&api.MigrateResult{ImageName: "sample", To: "edge-2"}); got != "" {
		t.Errorf("image not copied: %q, want nothing", got)
	}
	got := imageLine(&api.MigrateResult{ImageName: "sample", To: "edge-2", ImageFetchedFrom: "edge-1", ImageFetchBytes: 3 << 20, ImageFetchMS: 42.25,
		ImageRegistryError: "registry r/app:1: the registry did not answer within 3s"})
	want := "image sample copied from edge-1 to edge-2 before the freeze: 3.0 MiB in 42.2 ms (not part of the downtime)\n" +
		"  (not from its registry: registry r/app:1: the registry did not answer within 3s)"
	if got != want {
		t.Errorf("imageLine:\n%s\nwant:\n%s", got, want)
	}
}
