package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/coat-project/coat/internal/images"
	"github.com/coat-project/coat/internal/lab"
	"github.com/coat-project/coat/internal/linkspec"
)

func newLabCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "lab", Short: "A whole edge on this machine: hosts and a client as network namespaces"}
	var hosts, members int
	var overlayCIDR string
	var lf linkFlags
	var metricsOn bool
	up := &cobra.Command{
		Use:   "up [--hosts N] [--etcd-members 1|3] [--overlay-cidr CIDR] [--metrics=true|false] [--link-rate RATE] [--link-delay D] [--link-loss P] [--link NODE=rate=R,delay=D,loss=P]...",
		Short: "Build the lab (idempotent)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			t := time.Now()
			o := lab.Options{Name: g.lab, Hosts: hosts, OverlayCIDR: overlayCIDR, Self: self(), Log: logger(os.Stderr)}
			if cmd.Flags().Changed("overlay-cidr") && overlayCIDR == "" {
				return fmt.Errorf("--overlay-cidr: give an IPv4 network such as 10.96.0.0/16")
			}
			if cmd.Flags().Changed("etcd-members") {
				if err := lab.ValidEtcdMembers(members, hosts); err != nil {
					return err
				}
				o.EtcdMembers = members
			}
			links, err := lf.links(cmd, hosts)
			if err != nil {
				return err
			}
			o.Links = links
			if cmd.Flags().Changed("metrics") {
				o.Metrics = &metricsOn
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
			var shaped []string
			for _, n := range st.Nodes() {
				if l := st.Link(n); !l.Zero() {
					shaped = append(shaped, n+" "+l.String())
				}
			}
			if len(shaped) > 0 {
				fmt.Fprintf(cmd.OutOrStdout(), "links: %s\n", strings.Join(shaped, "; "))
			}
			if !st.NoMetrics {
				fmt.Fprintf(cmd.OutOrStdout(), "metrics: http://%s/metrics in each edge host's namespace (`coat lab exec edge-1 -- curl -s http://%s/metrics`)\n", lab.MetricsAddr, lab.MetricsAddr)
			}
			return nil
		},
	}
	up.Flags().IntVar(&hosts, "hosts", 2, "number of edge hosts")
	up.Flags().StringVar(&overlayCIDR, "overlay-cidr", "", "the containers' subnet, e.g. 10.96.0.0/16 (IPv4, /8 to /27; default 10.202.INDEX.0/24); recorded in the lab's etcd as coat init --overlay-cidr does")
	up.Flags().IntVar(&members, "etcd-members", 1, "etcd members: 1 (in the root namespace) or 3 (member i in edge-i's namespace; needs --hosts >= 3); a lab that is up keeps its count when not given")
	up.Flags().BoolVar(&metricsOn, "metrics", true, "agents serve Prometheus metrics on http://"+lab.MetricsAddr+"/metrics inside their own host's namespace (no extra process; --metrics=false: none); a lab that is up keeps its setting when not given")
	lf.register(up)
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
	part := &cobra.Command{
		Use:   "partition NODE",
		Short: "Cut a lab node off the underlay (both directions), as when its uplink fails; `coat lab heal` reconnects it",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			st, err := lab.Load(g.lab)
			if err != nil {
				return err
			}
			if err := st.Partition(args[0], true); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s cut off the underlay of lab %s\n", args[0], st.Name)
			return nil
		},
	}
	heal := &cobra.Command{
		Use:   "heal [NODE...]",
		Short: "Reconnect partitioned lab nodes (all of them without arguments)",
		RunE: func(cmd *cobra.Command, args []string) error {
			st, err := lab.Load(g.lab)
			if err != nil {
				return err
			}
			if len(args) == 0 {
				args = st.Partitioned()
			}
			for _, n := range args {
				if err := st.Partition(n, false); err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%s reconnected\n", n)
			}
			return nil
		},
	}
	cmd.AddCommand(up, down, exe, part, heal, newLabRoamCmd(), newLabShowCmd(), newLabRelayCmd())
	return cmd
}

// labImages builds the lab's images (images.LabImages: sample, sockperf,
// iperf3, redis) and imports them on every host.
func labImages(cmd *cobra.Command, st *lab.State) error {
	src := filepath.Join(lab.BaseDir, ".images")
	sampleBin := filepath.Join(filepath.Dir(self()), "coat-sample")
	if _, err := os.Stat(sampleBin); err != nil {
		return fmt.Errorf("sample binary %s missing: run `make build`", sampleBin)
	}
	s, err := connect(cmd.Context())
	if err != nil {
		return err
	}
	defer s.Close()
	for _, im := range images.LabImages(sampleBin) {
		name := im.Name
		dir := filepath.Join(src, name)
		if err := im.Build(dir); err != nil {
			return fmt.Errorf("build image %s: %w", name, err)
		}
		if err := importDir(cmd.Context(), nil, s, name, dir, im.Cmd); err != nil {
			return err
		}
	}
	return nil
}

// linkFlags are lab up's link emulation flags.
type linkFlags struct {
	rate, delay, loss string
	nodes             []string
}

func (f *linkFlags) register(c *cobra.Command) {
	fl := c.Flags()
	fl.StringVar(&f.rate, "link-rate", "", "every node's underlay link rate, both directions, e.g. 100mbit or 1gbit (TBF)")
	fl.StringVar(&f.delay, "link-delay", "", "delay added to every frame a node sends, e.g. 20ms: ping between two nodes takes about twice it")
	fl.StringVar(&f.loss, "link-loss", "", "probability that a frame a node sends is lost, e.g. 1%")
	fl.StringArrayVar(&f.nodes, "link", nil, "one node's link, replacing the --link-* settings for it, e.g. edge-2=rate=100mbit,delay=20ms,loss=1% or client=none (repeatable)")
}

// links reads the flags: nil when none was given (the lab keeps its
// links), else every node's link. Any link flag sets all links anew.
func (f *linkFlags) links(c *cobra.Command, hosts int) (map[string]linkspec.Link, error) {
	fl := c.Flags()
	if !fl.Changed("link-rate") && !fl.Changed("link-delay") && !fl.Changed("link-loss") && !fl.Changed("link") {
		return nil, nil
	}
	var def linkspec.Link
	var err error
	if fl.Changed("link-rate") {
		if def.Rate, err = linkspec.ParseRate(f.rate); err != nil {
			return nil, fmt.Errorf("--link-rate: %w", err)
		}
	}
	if fl.Changed("link-delay") {
		if def.Delay, err = linkspec.ParseDelay(f.delay); err != nil {
			return nil, fmt.Errorf("--link-delay: %w", err)
		}
	}
	if fl.Changed("link-loss") {
		if def.Loss, err = linkspec.ParseLoss(f.loss); err != nil {
			return nil, fmt.Errorf("--link-loss: %w", err)
		}
	}
	per := map[string]linkspec.Link{}
	for _, spec := range f.nodes {
		node, l, err := linkspec.ParseNodeLink(spec)
		if err != nil {
			return nil, fmt.Errorf("--link: %w", err)
		}
		if _, dup := per[node]; dup {
			return nil, fmt.Errorf("--link %s: %s's link is given twice: give one --link per node", spec, node)
		}
		per[node] = l
	}
	if err := lab.ValidateLinks(per, hosts); err != nil {
		return nil, err
	}
	all := map[string]linkspec.Link{}
	for _, n := range (&lab.State{Hosts: hosts}).Nodes() {
		all[n] = def
		if l, ok := per[n]; ok {
			all[n] = l
		}
	}
	return all, nil
}

// labNode is one node in `lab show --json`.
type labNode struct {
	Node       string  `json:"node"`
	UnderlayIP string  `json:"underlay_ip"`
	Link       string  `json:"link"` // as --link reads it; "none" when plain
	RateBps    int64   `json:"rate_bps,omitempty"`
	DelayMs    float64 `json:"delay_ms,omitempty"`
	Loss       float64 `json:"loss,omitempty"`
	Relay      bool    `json:"relay"` // frames it sends cross the userspace relay
	// AttachedTo: the client's, the edge host whose access network it is
	// in (coat lab roam).
	AttachedTo string `json:"attached_to,omitempty"`
}

func newLabShowCmd() *cobra.Command {
	var asJSON bool
	c := &cobra.Command{
		Use:   "show [--json]",
		Short: "Print the lab's nodes, their underlay IPs and their links",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, err := lab.Load(g.lab)
			if err != nil {
				return err
			}
			var nodes []labNode
			for _, n := range st.Nodes() {
				l := st.Link(n)
				nodes = append(nodes, labNode{Node: n, UnderlayIP: st.UnderlayIP(n).String(), Link: l.String(),
					RateBps: int64(l.Rate), DelayMs: float64(l.Delay) / float64(time.Millisecond), Loss: l.Loss, Relay: l.NeedsRelay()})
				if n == lab.ClientNode {
					nodes[len(nodes)-1].AttachedTo = st.ClientAt
				}
			}
			out := cmd.OutOrStdout()
			if asJSON {
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				return enc.Encode(map[string]any{"name": st.Name, "underlay": st.Underlay, "overlay": st.Overlay, "nodes": nodes})
			}
			fmt.Fprintf(out, "lab %s: underlay %s, overlay %s\n", st.Name, st.Underlay, st.Overlay)
			tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NODE\tUNDERLAY IP\tLINK\tPATH\tATTACHED TO")
			for _, n := range nodes {
				path := "kernel"
				if n.Relay {
					path = "relay"
				}
				at := n.AttachedTo
				if at == "" {
					at = "-"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", n.Node, n.UnderlayIP, n.Link, path, at)
			}
			return tw.Flush()
		},
	}
	c.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return c
}

// newLabRelayCmd is the process lab up starts for a link with a delay or
// a loss (see internal/lab/relay_linux.go).
func newLabRelayCmd() *cobra.Command {
	var node, in, out, delay, loss string
	c := &cobra.Command{
		Use:    "relay --node NODE --in DEV --out DEV --delay D --loss P",
		Short:  "Carry a lab node's frames with a delay and a loss (started by lab up)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			d, err := linkspec.ParseDelay(delay)
			if err != nil {
				return err
			}
			p, err := linkspec.ParseLoss(loss)
			if err != nil {
				return err
			}
			return lab.Relay(cmd.Context(), lab.RelayConfig{In: in, Out: out, Delay: d, Loss: p, Log: logger(os.Stderr).With("node", node)})
		},
	}
	f := c.Flags()
	f.StringVar(&node, "node", "", "the node whose frames these are")
	f.StringVar(&in, "in", "", "link to read the node's frames from (NAME or NAME@INDEX)")
	f.StringVar(&out, "out", "", "link to write them to (NAME or NAME@INDEX)")
	f.StringVar(&delay, "delay", "0", "delay per frame")
	f.StringVar(&loss, "loss", "0", "loss probability")
	return c
}

// roamTimeout bounds a roam (netlink work, the relay of a link, one write
// to etcd).
const roamTimeout = 30 * time.Second

func newLabRoamCmd() *cobra.Command {
	var to, link string
	c := &cobra.Command{
		Use:   "roam CLIENT --to edge-N [--link rate=R,delay=D,loss=P|none]",
		Short: "Re-attach the lab's client next to another edge host: a handover, its connections kept",
		Long: "Move the lab's client node to edge-N's access network, as a device that\n" +
			"attaches to another access point: it takes a new underlay address\n" +
			"(10.201.INDEX.(100+N)) and keeps its overlay IP and MAC. Its record in the\n" +
			"cluster store says where it is; every host's forwarding follows it, and\n" +
			"containers that follow it (`coat follow`) migrate to edge-N. --link sets\n" +
			"the new link's rate, delay and loss (as `lab up --link` reads them;\n" +
			"none: a plain link); without it the client's link stays as it is.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if to == "" {
				return errors.New("--to is required: the edge host to attach next to, e.g. --to edge-2")
			}
			st, err := lab.Load(g.lab)
			if err != nil {
				return err
			}
			if err := st.CheckRoam(args[0], to); err != nil {
				return err
			}
			var l *linkspec.Link
			if cmd.Flags().Changed("link") {
				parsed, err := linkspec.ParseLink(link)
				if err != nil {
					return fmt.Errorf("--link: %w", err)
				}
				l = &parsed
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), roamTimeout)
			defer cancel()
			res, err := lab.Roam(ctx, g.lab, args[0], to, l, self())
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if !res.Moved {
				fmt.Fprintf(out, "%s is already attached next to %s (underlay %s, link %s): nothing changed\n", args[0], to, res.ToIP, res.Link)
				return nil
			}
			if res.From == res.To {
				fmt.Fprintf(out, "%s stays next to %s (underlay %s); its link is now %s\n", args[0], res.To, res.ToIP, res.Link)
				return nil
			}
			from := res.From
			if from == "" {
				from = "its first attachment"
			}
			fmt.Fprintf(out, "%s roamed from %s to %s: underlay %s -> %s, link %s, recorded in %s\n",
				args[0], from, res.To, res.FromIP, res.ToIP, res.Link, res.Recorded.Round(time.Millisecond))
			return nil
		},
	}
	c.Flags().StringVar(&to, "to", "", "the edge host whose access network the client attaches to (edge-N)")
	c.Flags().StringVar(&link, "link", "", "the new link: rate=R,delay=D,loss=P or none (default: the client's link stays)")
	return c
}
