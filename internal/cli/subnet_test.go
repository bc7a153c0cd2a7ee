package cli

import (
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/coat-project/coat/internal/store"
)

// An agent's overlay subnet: the cluster's when recorded, --subnet when
// not, both only if they agree, neither is an error that says what to do.
func TestAgentSubnet(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	port := func() int {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		return l.Addr().(*net.TCPAddr).Port
	}
	url := fmt.Sprintf("http://127.0.0.1:%d", port())
	e, err := store.StartEmbedded(ctx, store.EmbedConfig{Name: "t", DataDir: t.TempDir(), ClientURL: url, PeerURL: fmt.Sprintf("http://127.0.0.1:%d", port())})
	if err != nil {
		t.Skipf("embedded etcd: %v", err)
	}
	defer e.Close()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{url}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	st := store.NewEtcd(cli, "/coat/", nil)
	defer st.Close()
	lab, _ := store.ParseOverlayCIDR("10.202.3.0/24")
	big, _ := store.ParseOverlayCIDR("10.96.0.0/16")

	if _, err := agentSubnet(ctx, st, nil, "/p", url); err == nil || !strings.Contains(err.Error(), "coat init --pki-dir /p --etcd-endpoints "+url+" --overlay-cidr CIDR") {
		t.Fatalf("neither: %v", err)
	}
	if sn, err := agentSubnet(ctx, st, lab, "/p", url); err != nil || sn.String() != "10.202.3.0/24" {
		t.Fatalf("flag only: %v %v", sn, err)
	}
	if err := st.SetOverlayCIDR(ctx, big); err != nil {
		t.Fatal(err)
	}
	if sn, err := agentSubnet(ctx, st, nil, "/p", url); err != nil || sn.String() != "10.96.0.0/16" {
		t.Fatalf("cluster only: %v %v", sn, err)
	}
	if sn, err := agentSubnet(ctx, st, big, "/p", url); err != nil || sn.String() != "10.96.0.0/16" {
		t.Fatalf("both, agreeing: %v %v", sn, err)
	}
	if _, err := agentSubnet(ctx, st, lab, "/p", url); err == nil || !strings.Contains(err.Error(), "differs from the cluster's overlay CIDR 10.96.0.0/16") {
		t.Fatalf("both, disagreeing: %v", err)
	}
}
