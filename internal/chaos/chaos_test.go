package chaos

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

func TestPlanIsReproducible(t *testing.T) {
	hosts, etcd := []string{"edge-1", "edge-2", "edge-3"}, []string{"etcd"}
	a, b := NewPlan(7, hosts, etcd), NewPlan(7, hosts, etcd)
	kinds := map[string]int{}
	for i := 0; i < 200; i++ {
		fa, fb := a.NextFault(), b.NextFault()
		if !reflect.DeepEqual(fa, fb) {
			t.Fatalf("draw %d differs: %+v %+v", i, fa, fb)
		}
		kinds[fa.Kind]++
		if fa.Repair <= 0 || fa.After <= 0 || fa.Node == "" {
			t.Fatalf("bad fault %+v", fa)
		}
		if d := a.Destination("edge-2"); d == "edge-2" || d != b.Destination("edge-2") {
			t.Fatalf("destination %q", d)
		}
	}
	for _, k := range []string{KillAgent, Partition, KillEtcd} {
		if kinds[k] == 0 {
			t.Errorf("200 draws never gave %s: %v", k, kinds)
		}
	}
	if c := NewPlan(8, hosts, etcd).NextFault(); reflect.DeepEqual(c, NewPlan(7, hosts, etcd).NextFault()) {
		t.Errorf("seeds 7 and 8 drew the same first fault %+v", c)
	}
}

func TestClassify(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want string
	}{
		{nil, Committed},
		{errors.New("transfer: reset; rolled back: the container runs again on the source"), RolledBack},
		{errors.New("container x is already migrating: busy"), Refused},
		{errors.New(`unknown host "edge-2"`), Refused},
		{errors.New("dial tcp 10.0.0.1:7443: connect: connection refused"), Refused},
		{errors.New("unexpected EOF"), Unknown},
	} {
		if got := Classify(tc.err); got != tc.want {
			t.Errorf("Classify(%v) = %s, want %s", tc.err, got, tc.want)
		}
	}
}

func TestCheck(t *testing.T) {
	good := Observed{Name: "c", Host: "edge-1", Status: "running", Runc: map[string]string{"edge-1": "running", "edge-2": ""}, Counter: 5, Acked: 5}
	if v := Check(good); len(v) != 0 {
		t.Fatalf("good state: %v", v)
	}
	for _, tc := range []struct {
		name   string
		change func(*Observed)
		want   string
	}{
		{"two copies", func(o *Observed) { o.Runc["edge-2"] = "running" }, "runs on 2 hosts"},
		{"stopped copy elsewhere", func(o *Observed) { o.Runc["edge-2"] = "stopped" }, "has a copy"},
		{"not running", func(o *Observed) { o.Runc["edge-1"] = "" }, "says \"\""},
		{"migrating", func(o *Observed) { o.Status = "migrating"; o.Migrating = true }, "record migrating"},
		{"failed", func(o *Observed) { o.Status = "failed" }, "record failed"},
		{"locked", func(o *Observed) { o.Locked = true }, "lock"},
		{"leftover", func(o *Observed) { o.Leftovers = []string{"edge-2/netns/c"} }, "left behind"},
		{"memory lost", func(o *Observed) { o.Counter = 3 }, "went back"},
		{"silent", func(o *Observed) { o.Counter = -1 }, "does not answer"},
	} {
		o := good
		o.Runc = map[string]string{"edge-1": "running", "edge-2": ""}
		tc.change(&o)
		v := Check(o)
		if len(v) == 0 || !strings.Contains(strings.Join(v, "\n"), tc.want) {
			t.Errorf("%s: violations %v, want one saying %q", tc.name, v, tc.want)
		}
	}
}

func TestReport(t *testing.T) {
	var r Report
	for _, o := range []string{Committed, Committed, RolledBack, Refused, Unknown} {
		r.Count(o)
	}
	if r.Migrations != 4 {
		t.Errorf("migrations %d, want 4 (refused ones did not begin)", r.Migrations)
	}
	s := r.String()
	for _, want := range []string{"migrations: 4 (committed 2, rolled back 1", "1 refused", "violations: none"} {
		if !strings.Contains(s, want) {
			t.Errorf("report lacks %q:\n%s", want, s)
		}
	}
}
