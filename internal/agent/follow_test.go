package agent

import (
	"slices"
	"sort"
	"testing"

	"github.com/coat-project/coat/internal/store"
)

func TestPlanFollow(t *testing.T) {
	hosts := []store.Host{{Name: "edge-1"}, {Name: "edge-2"}, {Name: "edge-3"}}
	ctr := func(name, host string, st store.Status) store.Container {
		return store.Container{Name: name, Host: host, Status: st}
	}
	cs := []store.Container{
		ctr("moves", "edge-1", store.StatusRunning),
		ctr("there", "edge-2", store.StatusRunning),
		ctr("migrating", "edge-1", store.StatusMigrating),
		ctr("elsewhere", "edge-3", store.StatusRunning),
		ctr("handled", "edge-1", store.StatusRunning),
		ctr("nowhere", "edge-1", store.StatusRunning),
		ctr("lost", "edge-1", store.StatusRunning),
		ctr("orphan", "edge-1", store.StatusRunning),
	}
	clients := map[string]store.Client{
		"phone":  {Name: "phone", AttachedTo: "edge-2", Roams: 3},
		"drone":  {Name: "drone", Roams: 1},
		"rover":  {Name: "rover", AttachedTo: "edge-9", Roams: 2},
		"tablet": {Name: "tablet", AttachedTo: "edge-1", Roams: 5},
	}
	follows := []store.Follow{
		{Container: "moves", Client: "phone", Handled: 2},
		{Container: "there", Client: "phone", Handled: 2},     // another host's: its agent decides
		{Container: "migrating", Client: "phone", Handled: 2}, // not now: its next host will
		{Container: "elsewhere", Client: "phone", Handled: 2},
		{Container: "handled", Client: "phone", Handled: 3}, // this roam is done
		{Container: "nowhere", Client: "drone", Handled: 0},
		{Container: "lost", Client: "rover", Handled: 1},
		{Container: "gone", Client: "phone", Handled: 0}, // no such container
		{Container: "orphan", Client: "ghost", Handled: 0},
		{Container: "stays", Client: "tablet", Handled: 4},
	}
	cs = append(cs, ctr("stays", "edge-1", store.StatusRunning))
	got := planFollow("edge-1", follows, cs, clients, hosts)
	type row struct {
		name, to string
		roam     int64
		why      bool
	}
	var rows []row
	for _, s := range got {
		rows = append(rows, row{s.Follow.Container, s.To, s.Roam, s.Why != ""})
	}
	want := []row{
		{"lost", "", 2, true}, // its host is not registered: claimed, not moved
		{"moves", "edge-2", 3, false},
		{"nowhere", "", 1, true}, // attached next to no host
		{"stays", "", 5, true},   // already next to it
	}
	if !slices.Equal(rows, want) {
		t.Fatalf("planFollow:\n got %+v\nwant %+v", rows, want)
	}
	// On edge-2, "there" is already next to the phone, and "moves" is
	// edge-1's business.
	got = planFollow("edge-2", follows, cs, clients, hosts)
	if len(got) != 1 || got[0].Follow.Container != "there" || got[0].To != "" {
		t.Fatalf("planFollow on edge-2: %+v", got)
	}
}

func TestDiffClients(t *testing.T) {
	a := store.Client{Name: "a", UnderlayIP: "10.0.0.1", MAC: "02:c0:00:00:00:01"}
	b := store.Client{Name: "b", UnderlayIP: "10.0.0.2", MAC: "02:c0:00:00:00:02"}
	names := func(cs []store.Client) []string {
		var out []string
		for _, c := range cs {
			out = append(out, c.Name+"@"+c.UnderlayIP)
		}
		sort.Strings(out)
		return out
	}
	for _, tc := range []struct {
		what        string
		before, now map[string]store.Client
		set, del    []string
		peers       bool
	}{
		{"first read", nil, map[string]store.Client{"a": a}, []string{"a@10.0.0.1"}, nil, true},
		{"nothing changed", map[string]store.Client{"a": a}, map[string]store.Client{"a": a}, nil, nil, false},
		{"a roamed", map[string]store.Client{"a": a, "b": b},
			map[string]store.Client{"a": {Name: "a", UnderlayIP: "10.0.0.9", MAC: a.MAC, Roams: 1}, "b": b},
			[]string{"a@10.0.0.9"}, nil, true},
		{"b removed", map[string]store.Client{"a": a, "b": b}, map[string]store.Client{"a": a}, nil, []string{"b@10.0.0.2"}, true},
		{"a's attachment only", map[string]store.Client{"a": a},
			map[string]store.Client{"a": {Name: "a", UnderlayIP: a.UnderlayIP, MAC: a.MAC, AttachedTo: "edge-2"}}, nil, nil, false},
	} {
		set, del, peers := diffClients(tc.before, tc.now)
		if !slices.Equal(names(set), tc.set) || !slices.Equal(names(del), tc.del) || peers != tc.peers {
			t.Errorf("%s: set %v del %v peers %v; want %v %v %v", tc.what, names(set), names(del), peers, tc.set, tc.del, tc.peers)
		}
	}
}
