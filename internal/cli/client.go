package cli

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/coat-project/coat/internal/client"
	"github.com/coat-project/coat/internal/pki"
)

// clientFlags are what `coat client up` and `down` share.
type clientFlags struct {
	name, server, dev string
	vni               int
}

func (f *clientFlags) config() (client.Config, error) {
	dir := g.pkiDir
	if dir == "" {
		dir = envOr("COAT_PKI_DIR", "/etc/coat/pki")
	}
	server := f.server
	if server == "" {
		server = os.Getenv("COAT_ETCD_ENDPOINTS")
	}
	c := client.Config{
		Name: f.name, Endpoints: strings.Split(server, ","), PKI: pki.FilesFor(dir, f.name),
		UnderlayDev: f.dev, VNI: f.vni, Log: logger(os.Stderr),
	}
	if server == "" {
		c.Endpoints = nil
	}
	return c, nil
}

func newClientCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "client", Short: "Make this Linux device a client of the overlay (no agent), or stop"}
	var f clientFlags
	up := &cobra.Command{
		Use:   "up --name NAME --server URLS [--pki-dir DIR] [--underlay-dev DEV] [--vni N]",
		Short: "Join the overlay as client NAME and keep its forwarding current (hosts, handovers) until stopped",
		Long: "Join the cluster's overlay as client NAME: its overlay IP (allocated by\n" +
			"`coat init --issue-client NAME`) on a bridge coat0, a VXLAN device on\n" +
			"--underlay-dev, flooding to every host, and its record in the cluster\n" +
			"store saying where its VTEP is. It runs until stopped (Ctrl-C leaves the\n" +
			"overlay and record in place; `coat client down` removes them), following\n" +
			"the hosts and the link's address: when the address changes (a handover to\n" +
			"another access network), the record follows at once and every host's\n" +
			"forwarding with it. Its certificate is PKI-DIR/NAME.crt (role client).",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := f.config()
			if err != nil {
				return err
			}
			return client.Up(cmd.Context(), c)
		},
	}
	down := &cobra.Command{
		Use:   "down --name NAME --server URLS [--pki-dir DIR]",
		Short: "Leave the overlay: stop a running `client up`, mark the client detached, remove its devices",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := f.config()
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 30*time.Second)
			defer cancel()
			if err := client.Down(ctx, c); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "client %s left the overlay\n", c.Name)
			return nil
		},
	}
	for _, c := range []*cobra.Command{up, down} {
		c.Flags().StringVar(&f.name, "name", "", "the client's name (its certificate's)")
		c.Flags().StringVar(&f.server, "server", "", "the cluster's etcd endpoints, comma-separated (env COAT_ETCD_ENDPOINTS)")
	}
	up.Flags().StringVar(&f.dev, "underlay-dev", "eth0", "the link to the edge hosts: its address is the client's VTEP")
	up.Flags().IntVar(&f.vni, "vni", 42, "the overlay's VXLAN network identifier (the lab's is 42)")
	cmd.AddCommand(up, down)
	return cmd
}
