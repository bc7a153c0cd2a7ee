package migrate

import (
	"strings"
	"testing"
)

func TestChoose(t *testing.T) {
	lazy := Features{LazyPages: true}
	both := Features{LazyPages: true, SoftDirty: true, PreCopy: true}
	for _, tc := range []struct {
		name string
		in   Inputs
		want Strategy
		err  string
	}{
		{"small on lan", Inputs{Requested: Auto, MemoryBytes: 8 << 20, Features: lazy}, StopAndCopy, ""},
		{"1GiB on lan", Inputs{Requested: Auto, MemoryBytes: 1 << 30, Features: lazy}, PostCopy, ""},
		{"64MiB on edge", Inputs{Requested: Auto, MemoryBytes: 64 << 20, LinkRate: 100e6, Features: lazy}, PostCopy, ""},
		{"4MiB on edge", Inputs{Requested: Auto, MemoryBytes: 2 << 20, LinkRate: 100e6, Features: lazy}, StopAndCopy, ""},
		{"big, no uffd, no soft-dirty", Inputs{Requested: Auto, MemoryBytes: 1 << 30}, StopAndCopy, ""},
		{"big, no uffd, soft-dirty", Inputs{Requested: Auto, MemoryBytes: 1 << 30, Features: Features{SoftDirty: true, PreCopy: true}}, PreCopy, ""},
		{"big, soft-dirty but no pipeline", Inputs{Requested: Auto, MemoryBytes: 1 << 30, Features: Features{SoftDirty: true}}, StopAndCopy, ""},
		{"pre-copy, soft-dirty but no pipeline", Inputs{Requested: PreCopy, Features: Features{SoftDirty: true}}, "", "not built"},
		{"big, both: post-copy first", Inputs{Requested: Auto, MemoryBytes: 1 << 30, Features: both}, PostCopy, ""},
		{"pre-copy without soft-dirty", Inputs{Requested: PreCopy, Features: lazy}, "", "soft-dirty"},
		{"pre-copy with soft-dirty", Inputs{Requested: PreCopy, Features: both}, PreCopy, ""},
		{"post-copy without uffd", Inputs{Requested: PostCopy}, "", "userfaultfd"},
		{"stop-and-copy always", Inputs{Requested: StopAndCopy}, StopAndCopy, ""},
	} {
		got, why, err := Choose(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%s: err %v, want one about %s", tc.name, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want || why == "" {
			t.Errorf("%s: got %q (%q), %v; want %q", tc.name, got, why, err, tc.want)
		}
	}
}

func TestParseStrategy(t *testing.T) {
	if s, err := ParseStrategy(""); err != nil || s != Auto {
		t.Fatalf("empty: %q %v", s, err)
	}
	if _, err := ParseStrategy("teleport"); err == nil || !strings.Contains(err.Error(), "post-copy") {
		t.Fatalf("unknown strategy: %v", err)
	}
}
