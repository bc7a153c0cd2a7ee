package e2e

import (
	"fmt"
	"strings"
	"sync"
	"testing"
)

// Many `coat run` at once on different hosts never give two containers
// the same IP or name: names and IPs are claimed in etcd transactions.
func TestConcurrentRunsGetDistinctIPs(t *testing.T) {
	l := newLab(t, 2)
	type result struct {
		out string
		err error
	}
	const n = 10
	results := make([]result, n+4)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			host := fmt.Sprintf("edge-%d", i%2+1)
			out, err := l.coat("run", "--host", host, "--name", fmt.Sprintf("c%d", i), "--image", "sample", "--", "/bin/coat-sample", "server")
			results[i] = result{out, err}
		}(i)
	}
	// Four racing for one explicit IP, and two for one name.
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			name := fmt.Sprintf("ip%d", i)
			if i >= 2 {
				name = "samename"
			}
			out, err := l.coat("run", "--host", fmt.Sprintf("edge-%d", i%2+1), "--name", name, "--ip", fmt.Sprintf("10.202.%d.200", l.labIndex()),
				"--image", "sample", "--", "/bin/coat-sample", "server")
			results[n+i] = result{out, err}
		}(i)
	}
	wg.Wait()
	for i := 0; i < n; i++ {
		if results[i].err != nil {
			t.Errorf("run c%d: %v\n%s", i, results[i].err, results[i].out)
		}
	}
	won := 0
	for _, r := range results[n:] {
		if r.err == nil {
			won++
		} else if !strings.Contains(r.out, "taken") && !strings.Contains(r.out, "already exists") {
			t.Errorf("a run that lost the race says: %s", r.out)
		}
	}
	if won != 1 {
		t.Errorf("%d runs got the same IP, want exactly 1", won)
	}
	cs := l.ps()
	if len(cs) != n+1 {
		t.Fatalf("ps lists %d containers, want %d: %+v", len(cs), n+1, cs)
	}
	seen := map[string]string{}
	for _, c := range cs {
		if other, dup := seen[c.IP]; dup {
			t.Errorf("%s and %s share IP %s", c.Name, other, c.IP)
		}
		seen[c.IP] = c.Name
		if c.Status != "running" {
			t.Errorf("%s is %s", c.Name, c.Status)
		}
	}
}
