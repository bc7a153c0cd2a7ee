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
			if asJSON {
				if hosts == nil {
					hosts = []store.Host{}
				}
				return json.NewEncoder(cmd.OutOrStdout()).Encode(hosts)
			}
			count := map[string]int{}
			for _, c := range cs {
				count[c.Host]++
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tUNDERLAY\tAPI\tCONTAINERS\tUP")
			for _, h := range hosts {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\n", h.Name, h.UnderlayIP, h.API, count[h.Name], time.Since(h.Started).Round(time.Second))
			}
			return tw.Flush()
		}),
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print a JSON array")
	return cmd
}
