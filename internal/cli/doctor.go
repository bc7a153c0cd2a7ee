package cli

import (
	"encoding/json"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/coat-project/coat/internal/doctor"
)

func newDoctorCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "doctor [--json]",
		Short: "Check what migration needs on this machine",
		Long: "Checks, and explains, what live migration needs on this machine: root, CRIU >= 4.2\n" +
			"and its kernel check, runc, kernel features (namespaces, VXLAN, bridge, veth, overlayfs,\n" +
			"checkpoint/restore; optionally userfaultfd, soft-dirty, nftables) and the lab's tools.\n" +
			"Exits 1 when a required check fails; warnings do not fail.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			rs := doctor.Check(cmd.Context(), doctor.System{})
			out := cmd.OutOrStdout()
			if asJSON {
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				if err := enc.Encode(rs); err != nil {
					return err
				}
			} else if err := doctor.Print(out, rs); err != nil {
				return err
			}
			if n := doctor.Failed(rs); n > 0 {
				if n == 1 {
					return fmt.Errorf("1 required check failed")
				}
				return fmt.Errorf("%d required checks failed", n)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the results as a JSON array of {name, status, detail, hint}")
	return cmd
}
