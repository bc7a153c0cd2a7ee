package cli

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/coat-project/coat/internal/images"
	"github.com/coat-project/coat/internal/lab"
)

func newLabCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "lab", Short: "A whole edge on this machine: hosts and a client as network namespaces"}
	var hosts, members int
	up := &cobra.Command{
		Use:   "up [--hosts N] [--etcd-members 1|3]",
		Short: "Build the lab (idempotent)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			t := time.Now()
			o := lab.Options{Name: g.lab, Hosts: hosts, Self: self(), Log: logger(os.Stderr)}
			if cmd.Flags().Changed("etcd-members") {
				if err := lab.ValidEtcdMembers(members, hosts); err != nil {
					return err
				}
				o.EtcdMembers = members
			}
			st, err := lab.Up(cmd.Context(), o)
			if err != nil {
				return err
			}
			if err := labImages(cmd, st); err != nil {
				return err
			}
			etcd := "etcd " + st.EtcdURL
			if st.Members() > 1 {
				etcd = fmt.Sprintf("etcd %d members %s", st.Members(), st.EtcdURL)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "lab %s up in %s: %d edge hosts, client %s (overlay %s), %s\n",
				st.Name, time.Since(t).Round(time.Millisecond), st.Hosts, lab.ClientNode, st.ClientOverlayIP(), etcd)
			return nil
		},
	}
	up.Flags().IntVar(&hosts, "hosts", 2, "number of edge hosts")
	up.Flags().IntVar(&members, "etcd-members", 1, "etcd members: 1 (in the root namespace) or 3 (member i in edge-i's namespace; needs --hosts >= 3); a lab that is up keeps its count when not given")
	down := &cobra.Command{
		Use:   "down",
		Short: "Remove the lab and everything it made",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := lab.Down(cmd.Context(), g.lab); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "lab %s down\n", g.lab)
			return nil
		},
	}
	exe := &cobra.Command{
		Use:   "exec NODE -- CMD [ARGS...]",
		Short: "Run a command in a lab node's network namespace",
		Args:  cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			st, err := lab.Load(g.lab)
			if err != nil {
				return err
			}
			node := args[0]
			known := false
			for _, n := range st.Nodes() {
				known = known || n == node
			}
			if !known {
				return fmt.Errorf("unknown node %q: the lab has %v", node, st.Nodes())
			}
			c := exec.Command(args[1], args[2:]...)
			c.Stdin, c.Stdout, c.Stderr = os.Stdin, os.Stdout, os.Stderr
			err = lab.InNetNS(st.NetNSPath(node), c.Start)
			if err != nil {
				return err
			}
			err = c.Wait()
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				return exitError{code: ee.ExitCode()}
			}
			return err
		},
	}
	cmd.AddCommand(up, down, exe)
	return cmd
}

// labImages builds the lab's images (sample, sockperf, iperf3) and imports
// them on every host.
func labImages(cmd *cobra.Command, st *lab.State) error {
	src := filepath.Join(lab.BaseDir, ".images")
	sampleBin := filepath.Join(filepath.Dir(self()), "coat-sample")
	if _, err := os.Stat(sampleBin); err != nil {
		return fmt.Errorf("sample binary %s missing: run `make build`", sampleBin)
	}
	builds := map[string]func(string) error{
		"sample":   func(d string) error { return images.BuildStatic(d, sampleBin, "coat-sample") },
		"sockperf": func(d string) error { return images.BuildFromHost(d, []string{"sockperf"}) },
		"iperf3":   func(d string) error { return images.BuildFromHost(d, []string{"iperf3"}) },
	}
	s, err := connect(cmd.Context())
	if err != nil {
		return err
	}
	defer s.Close()
	for _, name := range []string{"sample", "sockperf", "iperf3"} {
		dir := filepath.Join(src, name)
		if err := builds[name](dir); err != nil {
			return fmt.Errorf("build image %s: %w", name, err)
		}
		for i := 1; i <= st.Hosts; i++ {
			cl, err := s.agent(cmd.Context(), lab.EdgeName(i))
			if err != nil {
				return err
			}
			if err := importTo(cmd, cl, name, dir); err != nil {
				return fmt.Errorf("import %s on %s: %w", name, lab.EdgeName(i), err)
			}
		}
	}
	return nil
}
