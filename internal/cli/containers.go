package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"text/tabwriter"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/spf13/cobra"

	"github.com/coat-project/coat/internal/api"
	"github.com/coat-project/coat/internal/names"
	"github.com/coat-project/coat/internal/store"
	"github.com/coat-project/coat/internal/transfer"
)

func newRunCmd() *cobra.Command {
	var req api.RunRequest
	var host, workdir, user string
	cmd := &cobra.Command{
		Use:   "run --host H --name N [--ip IP] [--env K=V]... [--workdir DIR] [--user U] IMAGE [CMD [ARGS...]]",
		Short: "Run a container on a host",
		Long: "Run a container on a host, as `podman run` does: an image pulled or loaded\n" +
			"(`coat image pull`, `coat image load`) runs its Entrypoint and Cmd, with its\n" +
			"Env, WorkingDir and User; a CMD given replaces the image's Cmd (after its\n" +
			"Entrypoint), --env adds to or replaces its Env, --workdir and --user\n" +
			"(name, uid, name:group or uid:gid) replace its WorkingDir and User.\n" +
			"An image imported from a directory (`coat image import`) has no\n" +
			"configuration: give its command. The older form `--image IMG -- CMD`\n" +
			"works too. Options go before IMAGE: what follows it is the command.",
		RunE: func(cmd *cobra.Command, args []string) error {
			if req.Image == "" {
				if len(args) == 0 {
					return fmt.Errorf("no image: give one, e.g. `coat run --host edge-1 --name web sample /bin/coat-sample server`")
				}
				req.Image, args = args[0], args[1:]
			}
			req.Args = args
			if host == "" || req.Name == "" {
				return fmt.Errorf("--host and --name are required")
			}
			im, err := names.ParseImage(req.Image)
			if err != nil {
				return err
			}
			req.Image = im.String()
			if err := names.Container(req.Name); err != nil {
				return err
			}
			if err := names.Host(host); err != nil {
				return err
			}
			// What can be checked without the image's record is, before
			// anything connects.
			pre := req
			pre.Cwd = workdir
			if len(pre.Args) == 0 {
				pre.Args = []string{"(from the image)"}
			}
			if err := pre.Validate(); err != nil {
				return err
			}
			ctx := cmd.Context()
			s, err := connect(ctx)
			if err != nil {
				return err
			}
			defer s.Close()
			if err := runConfig(ctx, s, &req, workdir, user); err != nil {
				return err
			}
			if err := req.Validate(); err != nil {
				return err
			}
			if _, err := s.st.Container(ctx, req.Name); err == nil {
				return fmt.Errorf("container %q already exists: pick another name or `coat rm %s`", req.Name, req.Name)
			}
			drains, err := s.st.Drains(ctx)
			if err != nil {
				return err
			}
			if _, ok := drains[host]; ok {
				return fmt.Errorf("host %s is being drained (`coat drain`): pick another host (`coat hosts` lists them)", host)
			}
			cl, err := s.agent(ctx, host)
			if err != nil {
				return err
			}
			c, err := cl.Run(ctx, req)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s running on %s, ip %s, mac %s\n", c.Name, c.Host, c.IP, c.MAC)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&host, "host", "", "host to run on")
	f.StringVar(&req.Name, "name", "", "container name")
	f.StringVar(&req.IP, "ip", "", "overlay IP (allocated if not given)")
	f.StringVar(&req.Image, "image", "", "image name (or give it as the first argument)")
	f.StringArrayVar(&req.Env, "env", nil, "environment variable KEY=VALUE (repeatable; replaces the image's of that KEY)")
	f.StringVar(&workdir, "workdir", "", "working directory (default: the image's, or /)")
	f.StringVar(&user, "user", "", "user: name, uid, name:group or uid:gid (default: the image's, or root)")
	f.SetInterspersed(false)
	return cmd
}

func newPsCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "ps [--json]",
		Short: "List containers",
		Args:  cobra.NoArgs,
		RunE: withSession(func(ctx context.Context, cmd *cobra.Command, s *session, _ []string) error {
			cs, err := s.st.Containers(ctx)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			drains, err := s.st.Drains(ctx)
			if err != nil {
				return err
			}
			follows, err := followsByContainer(ctx, s)
			if err != nil {
				return err
			}
			// drainingTo is where a drain will move c, until it starts.
			drainingTo := func(c store.Container) string {
				if c.Status != store.StatusRunning {
					return ""
				}
				return drains[c.Host].Plan[c.Name]
			}
			if asJSON {
				type psOut struct {
					store.Container
					DrainingTo string `json:"draining_to,omitempty"`
					// Follows is the client it follows (coat follow).
					Follows string `json:"follows,omitempty"`
				}
				list := make([]psOut, 0, len(cs))
				for _, c := range cs {
					list = append(list, psOut{c, drainingTo(c), follows[c.Name]})
				}
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				return enc.Encode(list)
			}
			tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tHOST\tIP\tMAC\tIMAGE\tSTATUS\tFOLLOWS")
			for _, c := range cs {
				st := string(c.Status)
				if c.MigratingTo != "" {
					st += " -> " + c.MigratingTo
				} else if to := drainingTo(c); to != "" {
					st += " (draining -> " + to + ")"
				}
				fl := follows[c.Name]
				if fl == "" {
					fl = "-"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", c.Name, c.Host, c.IP, c.MAC, c.Image, st, fl)
			}
			return tw.Flush()
		}),
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print a JSON array")
	return cmd
}

func newLogsCmd() *cobra.Command {
	var follow bool
	cmd := &cobra.Command{
		Use:   "logs [-f] NAME",
		Short: "Print a container's output (its last MiB); -f follows it",
		Long: "Print a container's output: its stdout and stderr, at most the last 1 MiB\n" +
			"(a note on stderr says how much came before). A log file the container\n" +
			"replaced with a symlink or anything but a regular file is not read.\n\n" +
			"With -f, go on printing what it writes, wherever it migrates, until\n" +
			"Ctrl-C or until the container is removed.",
		Args: containerArg,
		RunE: withSession(func(ctx context.Context, cmd *cobra.Command, s *session, args []string) error {
			name := args[0]
			if follow {
				return followLogs(ctx, s, name, cmd.OutOrStdout(), cmd.ErrOrStderr())
			}
			_, cl, err := s.container(ctx, name)
			if err != nil {
				return err
			}
			rc, skipped, err := cl.Logs(ctx, name)
			if err != nil {
				return err
			}
			defer rc.Close()
			if skipped > 0 {
				fmt.Fprintf(cmd.ErrOrStderr(), "coat logs: the first %d bytes are not shown: only the last MiB is\n", skipped)
			}
			_, err = io.Copy(cmd.OutOrStdout(), rc)
			return err
		}),
	}
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "follow the output until Ctrl-C or until the container is removed")
	return cmd
}

// Following a log: each poll reads what came since the last (at most a
// MiB) from the agent the record names now, within logPollTimeout.
const (
	logPollEvery   = 300 * time.Millisecond
	logPollTimeout = 10 * time.Second
	// logGiveUp: a container whose agent does not answer for this long
	// (nor does the store) ends the follow with an error.
	logGiveUp = time.Minute
)

// followLogs prints the container's output (its last MiB first) and what
// it writes after, until ctx ends (nil) or the container is removed.
func followLogs(ctx context.Context, s *session, name string, out, errw io.Writer) error {
	from := int64(-1) // the tail first
	var failing time.Time
	var lastErr error
	for {
		n, err := pollLog(ctx, s, name, &from, out, errw)
		switch {
		case ctx.Err() != nil:
			return nil // Ctrl-C
		case errors.Is(err, store.ErrNotFound):
			fmt.Fprintf(errw, "coat logs: container %s was removed\n", name)
			return nil
		case err != nil:
			// An agent restarting, or a migration's switch: try again.
			if failing.IsZero() {
				failing = time.Now()
			}
			if lastErr == nil || err.Error() != lastErr.Error() {
				fmt.Fprintf(errw, "coat logs: %v (retrying)\n", err)
			}
			lastErr = err
			if time.Since(failing) > logGiveUp {
				return fmt.Errorf("follow %s: no answer for %v: %w (check `coat ps` and `coat hosts`)", name, logGiveUp, err)
			}
		default:
			failing, lastErr = time.Time{}, nil
		}
		if n > 0 && err == nil {
			continue // more may be waiting
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(logPollEvery):
		}
	}
}

// pollLog copies the container's output from *from to out and moves *from
// past it; it returns how many bytes it copied. A container no longer in
// the store is store.ErrNotFound.
func pollLog(ctx context.Context, s *session, name string, from *int64, out, errw io.Writer) (int64, error) {
	ctx, cancel := context.WithTimeout(ctx, logPollTimeout)
	defer cancel()
	c, err := s.st.Container(ctx, name)
	if err != nil {
		return 0, err
	}
	cl, err := s.agent(ctx, c.Host)
	if err != nil {
		return 0, err
	}
	ch, err := cl.LogsFrom(ctx, name, *from)
	if err != nil {
		return 0, err
	}
	defer ch.Body.Close()
	if ch.Skipped > 0 {
		if *from < 0 {
			fmt.Fprintf(errw, "coat logs: the first %d bytes are not shown: only the last MiB is\n", ch.Skipped)
		} else {
			fmt.Fprintf(errw, "coat logs: %d bytes are not shown: more than a MiB came at once\n", ch.Skipped)
		}
	}
	n, err := io.Copy(out, ch.Body)
	if *from < 0 || ch.Start != *from || n > 0 {
		*from = ch.Start + n
	}
	return n, err
}

func newRmCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "rm NAME",
		Short: "Stop and remove a container",
		Args:  containerArg,
		RunE: onContainer(func(ctx context.Context, _ *cobra.Command, cl *api.Client, name string) error {
			return cl.Remove(ctx, name)
		}),
	}
}

func newImageCmd() *cobra.Command {
	img := &cobra.Command{Use: "image", Short: "Manage images"}
	img.AddCommand(&cobra.Command{
		Use:   "import NAME DIR",
		Short: "Make a rootfs directory an image on every host",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			im, err := names.ParseImage(args[0])
			if err != nil {
				return err
			}
			name, dir := im.String(), args[1]
			if st, err := os.Stat(dir); err != nil || !st.IsDir() {
				return fmt.Errorf("%s is not a directory: give the image's root filesystem", dir)
			}
			// What every agent would refuse is found before any is asked.
			if err := transfer.CheckTree(dir, false); err != nil {
				return fmt.Errorf("image %s: %w", name, err)
			}
			ctx := cmd.Context()
			s, err := connect(ctx)
			if err != nil {
				return err
			}
			defer s.Close()
			if _, err := hostList(ctx, s); err != nil {
				return err
			}
			abs, _ := filepath.Abs(dir)
			return importDir(ctx, cmd.OutOrStdout(), s, name, abs, nil)
		},
	})
	img.AddCommand(imageSubcommands()...)
	return img
}

// importDir packs a rootfs directory once into a temporary tar file, one
// layer, sends it to every host that lacks it and records the image.
// importDir makes one layer of dir and the image name of it on every host;
// cmd is the image's default command (nil: none).
func importDir(ctx context.Context, out io.Writer, s *session, name, dir string, cmd []string) error {
	tmp, err := os.MkdirTemp("", "coat-image-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	path := filepath.Join(tmp, "layer.tar")
	if err := packDir(dir, path); err != nil {
		return fmt.Errorf("image %s: %w", name, err)
	}
	layer, err := tarball.LayerFromFile(path)
	if err != nil {
		return fmt.Errorf("image %s: %w", name, err)
	}
	diffID, err := layer.DiffID() // of the file just made
	if err != nil {
		return fmt.Errorf("image %s: %w", name, err)
	}
	il, err := sendImage(ctx, out, s, name, []v1.Layer{layer}, []v1.Hash{diffID})
	if err != nil {
		return err
	}
	return s.st.PutImage(ctx, store.Image{Name: name, Source: dir, Size: il.Size, Layers: il.Layers, Cmd: cmd, Created: time.Now().UTC()})
}

// containerArg checks the one argument of a command on a container: a
// valid container name, before anything connects.
func containerArg(cmd *cobra.Command, args []string) error {
	if err := cobra.ExactArgs(1)(cmd, args); err != nil {
		return err
	}
	return names.Container(args[0])
}

// hostArg checks the one argument of a command on a host: a valid host
// name, before anything connects.
func hostArg(cmd *cobra.Command, args []string) error {
	if err := cobra.ExactArgs(1)(cmd, args); err != nil {
		return err
	}
	return names.Host(args[0])
}

// onContainer is the RunE of a command on one named container: it finds
// the container and the agent of its host, then calls f.
func onContainer(f func(ctx context.Context, cmd *cobra.Command, cl *api.Client, name string) error) func(*cobra.Command, []string) error {
	return withSession(func(ctx context.Context, cmd *cobra.Command, s *session, args []string) error {
		_, cl, err := s.container(ctx, args[0])
		if err != nil {
			return err
		}
		return f(ctx, cmd, cl, args[0])
	})
}

// withSession is the RunE of a command that talks to the cluster.
func withSession(f func(ctx context.Context, cmd *cobra.Command, s *session, args []string) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		ctx := cmd.Context()
		s, err := connect(ctx)
		if err != nil {
			return err
		}
		defer s.Close()
		return f(ctx, cmd, s, args)
	}
}
