package cli

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	goruntime "runtime"
	"strings"
	"text/tabwriter"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/spf13/cobra"

	"github.com/coat-project/coat/internal/api"
	"github.com/coat-project/coat/internal/names"
	"github.com/coat-project/coat/internal/oci"
	"github.com/coat-project/coat/internal/store"
	"github.com/coat-project/coat/internal/transfer"
)

// imageSubcommands are `coat image pull`, `load`, `ls` and `rm`.
func imageSubcommands() []*cobra.Command {
	var insecure bool
	var timeout time.Duration
	pull := &cobra.Command{
		Use:   "pull [--insecure] REF",
		Short: "Pull an image from an OCI registry onto every host",
		Long: "Pull an image from any OCI registry (credentials from the Docker and Podman\n" +
			"auth files, as `docker login`/`podman login` write them), check every layer\n" +
			"against its digest, send every host the layers it lacks (each host keeps a\n" +
			"layer once, for every image that has it) and record the image with its\n" +
			"configuration (Entrypoint, Cmd, Env, WorkingDir, User) for `coat run`.\n" +
			"REF may name a digest (NAME@sha256:HEX, NAME:TAG@sha256:HEX): the\n" +
			"registry's manifest must have it.\n" +
			"Setuid/setgid bits are cleared and device nodes left out (containers run\n" +
			"with no_new_privs and get their own /dev). --insecure allows plain HTTP.",
		Args: imageArg,
		RunE: withSession(func(ctx context.Context, cmd *cobra.Command, s *session, args []string) error {
			ref := args[0]
			im, err := names.ParseImage(ref)
			if err != nil {
				return err
			}
			if _, err := hostList(ctx, s); err != nil {
				return err
			}
			// The download's deadline (each request also has its own:
			// oci.PullTimeout); the hosts' imports have theirs.
			dl, cancel := context.WithTimeout(ctx, timeout)
			defer cancel()
			img, err := oci.Pull(dl, ref, insecure, v1.Platform{OS: "linux", Architecture: goruntime.GOARCH})
			if err != nil {
				return err
			}
			return importOCI(ctx, dl, cmd, s, img, im.String(), ref, true, insecure)
		}),
	}
	pull.Flags().BoolVar(&insecure, "insecure", false, "allow a plain-HTTP (or self-signed) registry")
	pull.Flags().DurationVar(&timeout, "timeout", 15*time.Minute, "give up the download after this long")

	var as string
	load := &cobra.Command{
		Use:   "load [--name NAME] FILE",
		Short: "Load an image archive (docker save, podman save) onto every host",
		Long: "Load a docker-archive (`docker save`, `podman save`) or an oci-archive\n" +
			"(`podman save --format oci-archive`) holding one image, check its layers\n" +
			"against their digests and import it on every host, as `coat image pull`\n" +
			"does. The image keeps the name in the archive, or takes --name.",
		Args: func(cmd *cobra.Command, args []string) error {
			if err := cobra.ExactArgs(1)(cmd, args); err != nil {
				return err
			}
			if as != "" {
				_, err := names.ParseImage(as)
				return err
			}
			return nil
		},
		RunE: withSession(func(ctx context.Context, cmd *cobra.Command, s *session, args []string) error {
			file := args[0]
			if as != "" {
				if _, err := names.ParseImage(as); err != nil {
					return err
				}
			}
			if _, err := hostList(ctx, s); err != nil {
				return err
			}
			img, ref, cleanup, err := oci.Load(file)
			defer cleanup()
			if err != nil {
				return err
			}
			if as != "" {
				ref = as
			}
			if ref == "" {
				return fmt.Errorf("%s does not name its image: give one with --name NAME", file)
			}
			im, err := names.ParseImage(ref)
			if err != nil {
				return fmt.Errorf("the archive names its image %q, which COAT does not accept: give another with --name NAME (%w)", ref, err)
			}
			// A name by digest must be the archive's image (a pull's
			// digest go-containerregistry checks against the registry's
			// manifest, or index for a multi-platform image).
			if d, err := img.Digest(); err == nil && im.Digest != "" && im.Digest != d.String() {
				return fmt.Errorf("the name %s gives a digest, but the archive's image is %s: nothing imported", im, d)
			}
			abs, _ := filepath.Abs(file)
			return importOCI(ctx, ctx, cmd, s, img, im.String(), abs, false, false)
		}),
	}
	load.Flags().StringVar(&as, "name", "", "name to give the image (default: the name in the archive)")

	ls := &cobra.Command{
		Use:   "ls",
		Short: "List the images pulled, loaded or imported",
		Args:  cobra.NoArgs,
		RunE: withSession(func(ctx context.Context, cmd *cobra.Command, s *session, _ []string) error {
			ims, err := s.st.Images(ctx)
			if err != nil {
				return err
			}
			// How many images list each layer: SHARED is the part of an
			// image's size that hosts store once for several images.
			users := map[string]int{}
			for _, im := range ims {
				for _, l := range im.Layers {
					users[l.Digest]++
				}
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tDIGEST\tLAYERS\tSIZE\tSHARED\tSOURCE\tCREATED")
			for _, im := range ims {
				d := im.Digest
				if d == "" {
					d = "-"
				} else if len(d) > 19 {
					d = d[:19]
				}
				size := "-" // imported from a directory by an older CLI: not measured
				if im.Size > 0 {
					size = humanSize(im.Size)
				}
				layers, shared := "flat", "-" // recorded before COAT stored layers
				if len(im.Layers) > 0 {
					// Layers' stream sizes, SIZE and SHARED alike.
					var all, n int64
					for _, l := range im.Layers {
						all += l.Size
						if users[l.Digest] > 1 {
							n += l.Size
						}
					}
					layers, size, shared = fmt.Sprint(len(im.Layers)), humanSize(all), humanSize(n)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", im.Name, d, layers, size, shared, im.Source, im.Created.Format(time.RFC3339))
			}
			return tw.Flush()
		}),
	}

	var onHost string
	rm := &cobra.Command{
		Use:   "rm [--host HOST] NAME",
		Short: "Remove an image from every host (refused while a container uses it), or from one",
		Long: "Remove an image from every host and its record, refused while any container\n" +
			"uses it. With --host, only from that host's disk, refused while a container\n" +
			"there (or migrating there) uses it; the record stays, and a migration to\n" +
			"that host copies the image back from the source first.",
		Args: func(cmd *cobra.Command, args []string) error {
			if onHost != "" {
				if err := names.Host(onHost); err != nil {
					return fmt.Errorf("--host: %w", err)
				}
			}
			return imageArg(cmd, args)
		},
		RunE: withSession(func(ctx context.Context, cmd *cobra.Command, s *session, args []string) error {
			im, err := names.ParseImage(args[0])
			if err != nil {
				return err
			}
			name := im.String()
			if onHost != "" {
				cl, err := s.agent(ctx, onHost)
				if err != nil {
					return err
				}
				if err := cl.RemoveImage(ctx, name); err != nil {
					return fmt.Errorf("remove image %s on %s: %w", name, onHost, err)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "image %s removed from %s\n", name, onHost)
				return nil
			}
			cs, err := s.st.Containers(ctx)
			if err != nil {
				return err
			}
			var users []string
			for _, c := range cs {
				if c.Image == name {
					users = append(users, c.Name)
				}
			}
			if len(users) > 0 {
				return fmt.Errorf("image %s is used by container(s) %s: remove them first (`coat rm NAME`)", name, strings.Join(users, ", "))
			}
			hosts, err := hostList(ctx, s)
			if err != nil {
				return err
			}
			for _, h := range hosts {
				cl, err := s.agent(ctx, h.Name)
				if err != nil {
					return err
				}
				if err := cl.RemoveImage(ctx, name); err != nil {
					return fmt.Errorf("remove image %s on %s: %w", name, h.Name, err)
				}
			}
			if err := s.st.DeleteImage(ctx, name); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "image %s removed\n", name)
			return nil
		}),
	}
	rm.Flags().StringVar(&onHost, "host", "", "remove the image from this host only (its record stays)")
	return []*cobra.Command{pull, load, ls, rm}
}

// imageArg checks the one argument of a command on an image, before
// anything connects.
func imageArg(cmd *cobra.Command, args []string) error {
	if err := cobra.ExactArgs(1)(cmd, args); err != nil {
		return err
	}
	_, err := names.ParseImage(args[0])
	return err
}

func hostList(ctx context.Context, s *session) ([]store.Host, error) {
	hosts, err := s.st.Hosts(ctx)
	if err != nil {
		return nil, err
	}
	if len(hosts) == 0 {
		return nil, fmt.Errorf("no hosts: start agents first (`coat lab up`)")
	}
	return hosts, nil
}

// importOCI checks img's layers against their digests (download says
// img is remote: it is copied once to a local cache first), and only
// then sends every host the layers it lacks (sendImage) and records the
// image with its configuration: a corrupt image changes nothing.
// insecure: the registry was reached with --insecure.
func importOCI(ctx, dl context.Context, cmd *cobra.Command, s *session, img v1.Image, name, source string, download, insecure bool) error {
	out := cmd.OutOrStdout()
	tmp, err := os.MkdirTemp("", "coat-image-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	if download {
		if img, err = oci.Cache(img, filepath.Join(tmp, "layout")); err != nil {
			if dl.Err() != nil {
				return fmt.Errorf("pull %s: not done within --timeout: %w", source, err)
			}
			return fmt.Errorf("pull %s: %w", source, err)
		}
	}
	if err := oci.Verify(img); err != nil {
		return fmt.Errorf("image %s: %w", name, err)
	}
	cfg, err := oci.ConfigOf(img)
	if err != nil {
		return fmt.Errorf("image %s: %w", name, err)
	}
	digest, err := img.Digest()
	if err != nil {
		return fmt.Errorf("image %s: %w", name, err)
	}
	layers, err := img.Layers()
	if err != nil {
		return fmt.Errorf("image %s: %w", name, err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return fmt.Errorf("image %s: %w", name, err)
	}
	il, err := sendImage(ctx, out, s, name, layers, cf.RootFS.DiffIDs)
	if err != nil {
		return err
	}
	if note := il.Changes.String(); note != "" {
		fmt.Fprintf(cmd.ErrOrStderr(), "coat image: %s: %s\n", name, note)
	}
	rec := store.Image{
		Name: name, Source: source, Digest: digest.String(), Size: il.Size, Layers: il.Layers, Insecure: insecure,
		Entrypoint: cfg.Entrypoint, Cmd: cfg.Cmd, Env: cfg.Env, WorkingDir: cfg.WorkingDir, User: cfg.User,
		Users: il.Users, Groups: il.Groups, Created: time.Now().UTC(),
	}
	return s.st.PutImage(ctx, rec)
}

// packDir packs the rootfs directory dir into the tar file path, a
// layer (names relative to dir).
func packDir(dir, path string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	tw := tar.NewWriter(f)
	_, err = transfer.Pack(tw, dir, "", false)
	if err == nil {
		err = tw.Close()
	}
	return errors.Join(err, f.Close())
}

func humanSize(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

// runConfig fills req's command, environment, working directory and user
// from its image's record (if it was pulled or loaded) and the command
// line, as `podman run` does. An image imported from a directory has no
// configuration: the command must be given, and --user be numeric.
func runConfig(ctx context.Context, s *session, req *api.RunRequest, workdir, user string) error {
	rec, err := s.st.Image(ctx, req.Image)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return err
	}
	c := oci.Config{Entrypoint: rec.Entrypoint, Cmd: rec.Cmd, Env: rec.Env, WorkingDir: rec.WorkingDir, User: rec.User}
	r, err := oci.RunOf(c, rec.Users, rec.Groups, oci.Overrides{Args: req.Args, Env: req.Env, Workdir: workdir, User: user})
	if err != nil {
		return fmt.Errorf("image %s: %w", req.Image, err)
	}
	req.Args, req.Env, req.Cwd, req.UID, req.GID = r.Args, r.Env, r.Cwd, r.UID, r.GID
	if req.Cwd == "/" {
		req.Cwd = ""
	}
	return nil
}
