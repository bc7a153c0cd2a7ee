package store

import (
	"encoding/json"
	"testing"
)

func TestDecodeEvent(t *testing.T) {
	s := &Etcd{prefix: "/coat/"}
	c, _ := json.Marshal(Container{Name: "web", Host: "edge-1", Status: StatusRunning})
	m, _ := json.Marshal(Migration{Name: "web", From: "edge-1", To: "edge-2", Phase: "locked"})
	h, _ := json.Marshal(Host{Name: "edge-1"})
	for _, tc := range []struct {
		key         string
		deleted     bool
		value, prev []byte
		kind        string
		ok          bool
	}{
		{"/coat/containers/web", false, c, nil, KindContainer, true},
		{"/coat/containers/web", true, nil, c, KindContainer, true},
		{"/coat/containers/web", true, nil, nil, KindContainer, true}, // no previous value kept
		{"/coat/containers/web", false, []byte("{"), nil, "", false},
		{"/coat/migrations/web", false, m, nil, KindMigration, true},
		{"/coat/hosts/edge-1", false, h, nil, KindHost, true},
		{"/coat/hosts/edge-1", true, nil, nil, KindHost, true},
		{"/coat/gone/edge-1", false, []byte("2026-11-28T07:00:00Z"), nil, KindGone, true},
		{"/coat/ips/10.202.0.2", false, []byte("web"), nil, "", false},
		{"/coat/locks/web", false, []byte("edge-1"), nil, "", false},
		{"/other/containers/web", false, c, nil, "", false},
	} {
		e, ok := s.decodeEvent(tc.key, tc.deleted, tc.value, tc.prev)
		if ok != tc.ok || (ok && e.Kind != tc.kind) {
			t.Errorf("%s (deleted %v): kind %q ok %v, want %q %v", tc.key, tc.deleted, e.Kind, ok, tc.kind, tc.ok)
		}
		if ok && tc.kind == KindContainer && (e.Container == nil || e.Container.Name != "web") {
			t.Errorf("%s: container %+v", tc.key, e.Container)
		}
	}
}
