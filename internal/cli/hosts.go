package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/coat-project/coat/internal/store"
)

func newHostsCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "hosts [--json]",
		Short: "List the edge hosts whose agents are alive",
		Args:  cobra.NoArgs,
		RunE: withSession(func(ctx context.Context, cmd *cobra.Command, s *session, _ []string) error {
			hosts, err := s.st.Hosts(ctx)
			if err != nil {
				return err
			}
			cs, err := s.st.Containers(ctx)
			if err != nil {
				return err
			}
			drains, err := s.st.Drains(ctx)
			if err != nil {
				return err
			}
			if asJSON {
				type hostOut struct {
					store.Host
					Draining bool `json:"draining,omitempty"`
				}
				hs := make([]hostOut, 0, len(hosts))
				for _, h := range hosts {
					_, d := drains[h.Name]
					hs = append(hs, hostOut{h, d})
				}
				return json.NewEncoder(cmd.OutOrStdout()).Encode(hs)
			}
			count := map[string]int{}
			for _, c := range cs {
				count[c.Host]++
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tUNDERLAY\tAPI\tCONTAINERS\tUP\tSTATE")
			for _, h := range hosts {
				state := "ready"
				if _, ok := drains[h.Name]; ok {
					state = "draining"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\n", h.Name, h.UnderlayIP, h.API, count[h.Name], time.Since(h.Started).Round(time.Second), state)
			}
			return tw.Flush()
		}),
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print a JSON array")
	cmd.AddCommand(newHostsForgetCmd())
	return cmd
}

// newHostsForgetCmd declares a dead host gone: until then every other host
// keeps forwarding to it (its containers may run on while its agent is
// cut off), for --host-gone-after at most.
func newHostsForgetCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "forget HOST",
		Short: "Declare a dead host gone: the other hosts stop forwarding to it, and its containers are marked failed",
		Long: `Declare a dead host gone. While a host's agent is absent (stopped, or cut
off from etcd) the other hosts keep forwarding to it, because its
containers may still run; they drop it only after --host-gone-after (10
minutes by default), or when an operator runs this. A live host (one
whose agent renews its record) is never forgotten. The host's containers
are marked failed (` + "`coat rm NAME`" + ` removes their records). If the host
comes back (its agent registers again), it is forwarded to again.`,
		Args: hostArg,
		RunE: withSession(func(ctx context.Context, cmd *cobra.Command, s *session, args []string) error {
			name := args[0]
			hosts, err := s.st.Hosts(ctx)
			if err != nil {
				return err
			}
			for _, h := range hosts {
				if h.Name == name {
					return fmt.Errorf("host %s is alive (its agent renews its record): stop its agent first; a live host is never forgotten", name)
				}
			}
			cs, err := s.st.Containers(ctx)
			if err != nil {
				return err
			}
			known := false
			for _, c := range cs {
				known = known || c.Host == name || c.MigratingTo == name
			}
			if !known {
				gone, err := s.st.Gone(ctx)
				if err != nil {
					return err
				}
				if _, ok := gone[name]; ok {
					fmt.Fprintf(cmd.OutOrStdout(), "host %s was already declared gone\n", name)
					return nil
				}
			}
			if err := s.st.DeclareGone(ctx, name); err != nil {
				return err
			}
			failed := 0
			for _, c := range cs {
				if c.Host != name || c.Status == store.StatusFailed {
					continue
				}
				c.Status = store.StatusFailed
				c.Error = fmt.Sprintf("host %s was declared gone (`coat hosts forget`) on %s: the container is lost with it (`coat rm %s` removes the record)",
					name, time.Now().UTC().Format(time.RFC3339), c.Name)
				if _, err := s.st.UpdateContainer(ctx, c); err != nil {
					return fmt.Errorf("mark %s failed: %w", c.Name, err)
				}
				failed++
			}
			fmt.Fprintf(cmd.OutOrStdout(), "host %s declared gone: the other hosts stop forwarding to it; %d container(s) marked failed\n", name, failed)
			return nil
		}),
	}
}
