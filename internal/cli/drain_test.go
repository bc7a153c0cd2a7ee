package cli

import (
	"maps"
	"reflect"
	"strings"
	"testing"

	"github.com/coat-project/coat/internal/store"
)

func TestPlanDrainBalances(t *testing.T) {
	// Five containers, two empty targets: 3 and 2, ties to the first by name.
	plan, noRoom := planDrain([]string{"s5", "s3", "s1", "s2", "s4"}, map[string]int{"edge-1": 5}, []string{"edge-3", "edge-2"}, 0)
	want := map[string]string{"s1": "edge-2", "s2": "edge-3", "s3": "edge-2", "s4": "edge-3", "s5": "edge-2"}
	if !maps.Equal(plan, want) || noRoom != nil {
		t.Fatalf("plan %v noRoom %v, want %v", plan, noRoom, want)
	}
}

func TestPlanDrainLeastLoadedFirst(t *testing.T) {
	// edge-2 holds 3, edge-3 holds 0: the first three go to edge-3, then
	// they alternate from a tie.
	plan, _ := planDrain([]string{"a", "b", "c", "d", "e"}, map[string]int{"edge-2": 3}, []string{"edge-2", "edge-3"}, 0)
	want := map[string]string{"a": "edge-3", "b": "edge-3", "c": "edge-3", "d": "edge-2", "e": "edge-3"}
	if !maps.Equal(plan, want) {
		t.Fatalf("plan %v, want %v", plan, want)
	}
}

func TestPlanDrainMaxPerHost(t *testing.T) {
	plan, noRoom := planDrain([]string{"a", "b", "c", "d"}, map[string]int{"edge-2": 1}, []string{"edge-2", "edge-3"}, 2)
	want := map[string]string{"a": "edge-3", "b": "edge-2", "c": "edge-3"}
	if !maps.Equal(plan, want) || !reflect.DeepEqual(noRoom, []string{"d"}) {
		t.Fatalf("plan %v noRoom %v, want %v and [d]", plan, noRoom, want)
	}
	// No targets: nothing placed.
	plan, noRoom = planDrain([]string{"a"}, nil, nil, 0)
	if len(plan) != 0 || !reflect.DeepEqual(noRoom, []string{"a"}) {
		t.Fatalf("no targets: plan %v noRoom %v", plan, noRoom)
	}
}

func TestHostLoadCountsIncoming(t *testing.T) {
	got := hostLoad([]store.Container{
		{Name: "a", Host: "edge-1"},
		{Name: "b", Host: "edge-1", MigratingTo: "edge-2", Status: store.StatusMigrating},
		{Name: "c", Host: "edge-3"},
	})
	if want := map[string]int{"edge-1": 2, "edge-2": 1, "edge-3": 1}; !maps.Equal(got, want) {
		t.Fatalf("load %v, want %v", got, want)
	}
}

// Bad input is refused before anything connects to the cluster.
func TestDrainBadFlags(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"drain", "edge-1", "--parallel", "0"}, "--parallel 0"},
		{[]string{"drain", "edge-1", "--parallel", "-2"}, "--parallel -2"},
		{[]string{"drain", "edge-1", "--max-per-host", "-1"}, "--max-per-host -1"},
		{[]string{"drain", "edge-1", "--strategy", "teleport"}, "teleport"},
		{[]string{"drain", "edge-1", "--timeout", "0s"}, "--timeout"},
		{[]string{"drain", "../x"}, "host"},
		{[]string{"drain"}, ""},
	} {
		root := newRoot()
		root.SetArgs(append(tt.args, "--etcd-endpoints", "https://127.0.0.1:1", "--pki-dir", t.TempDir()))
		err := root.Execute()
		if err == nil {
			t.Errorf("%v: accepted", tt.args)
			continue
		}
		if !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%v: error %q does not mention %q", tt.args, err, tt.want)
		}
		if strings.Contains(err.Error(), "cluster store") {
			t.Errorf("%v: connected before checking the flags: %v", tt.args, err)
		}
	}
}
