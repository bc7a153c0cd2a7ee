package cli

import (
	"context"
	"os"
	"path/filepath"

	"github.com/coat-project/coat/internal/lab"
	"github.com/coat-project/coat/internal/store"
)

// The storm workload's operations on the lab (bench.StormOps).

// Follow records that name follows the lab's client, as `coat follow`.
func (o *benchOps) Follow(ctx context.Context, name string) error {
	ctx, cancel := context.WithTimeout(ctx, followTimeout)
	defer cancel()
	_, err := o.s.st.SetFollow(ctx, name, lab.ClientNode)
	return err
}

// Roam re-attaches the lab's client next to host to, as `coat lab roam`.
func (o *benchOps) Roam(ctx context.Context, to string) error {
	ctx, cancel := context.WithTimeout(ctx, roamTimeout)
	defer cancel()
	_, err := lab.Roam(ctx, o.st.Name, lab.ClientNode, to, nil, self())
	return err
}

// Placement is where each running container runs, from one read of the
// records.
func (o *benchOps) Placement(ctx context.Context) (map[string]string, error) {
	ctx, cancel := context.WithTimeout(ctx, followTimeout)
	defer cancel()
	cs, err := o.s.st.Containers(ctx)
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, c := range cs {
		if c.Status == store.StatusRunning {
			out[c.Name] = c.Host
		}
	}
	return out, nil
}

// AgentLog is host's agent log in the lab.
func (o *benchOps) AgentLog(host string) ([]byte, error) {
	return os.ReadFile(filepath.Join(o.st.Dir, "logs", host+".log"))
}
