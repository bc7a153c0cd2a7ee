package cli

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/coat-project/coat/internal/names"
	"github.com/coat-project/coat/internal/store"
)

// followTimeout bounds follow's and unfollow's calls to the store.
const followTimeout = 10 * time.Second

func newFollowCmd() *cobra.Command {
	var client string
	cmd := &cobra.Command{
		Use:   "follow NAME --client CLIENT",
		Short: "Keep a container next to a mobile client: at each of its roams, the container migrates to the host serving it",
		Long: "Record in the cluster store that container NAME follows client CLIENT: each\n" +
			"time the client attaches to another access network (in the lab: `coat lab\n" +
			"roam`), the agent running NAME migrates it, once, to the edge host serving\n" +
			"the client's new attachment, keeping its connections. Roams before this\n" +
			"command do not move it. `coat unfollow NAME` ends it; `coat ps` shows it.",
		Args: func(cmd *cobra.Command, args []string) error {
			if err := containerArg(cmd, args); err != nil {
				return err
			}
			if client == "" {
				return errors.New("--client is required: the client device to follow, e.g. --client client (the lab's)")
			}
			if err := names.Host(client); err != nil {
				return fmt.Errorf("--client: %w", err)
			}
			return nil
		},
		RunE: withSession(func(ctx context.Context, cmd *cobra.Command, s *session, args []string) error {
			name := args[0]
			ctx, cancel := context.WithTimeout(ctx, followTimeout)
			defer cancel()
			if _, err := s.record(ctx, name); err != nil {
				return err
			}
			cl, err := s.st.ClientRecord(ctx, client)
			if errors.Is(err, store.ErrNotFound) {
				return unknownClient(ctx, s, client)
			}
			if err != nil {
				return err
			}
			if _, err := s.st.SetFollow(ctx, name, client); errors.Is(err, store.ErrNotFound) {
				return fmt.Errorf("container %q was removed meanwhile: nothing recorded", name)
			} else if err != nil {
				return err
			}
			at := "next to no host yet"
			if cl.AttachedTo != "" {
				at = "now next to " + cl.AttachedTo
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s follows %s (%s): at each of its roams it moves to the host serving it\n", name, client, at)
			return nil
		}),
	}
	cmd.Flags().StringVar(&client, "client", "", "the client to follow (the lab's is named client)")
	return cmd
}

// unknownClient is the error for a client without a record: it lists
// the known ones.
func unknownClient(ctx context.Context, s *session, client string) error {
	cls, err := s.st.Clients(ctx)
	if err != nil {
		return err
	}
	var known []string
	for _, c := range cls {
		known = append(known, c.Name)
	}
	if len(known) == 0 {
		return fmt.Errorf("unknown client %q: the cluster knows no clients (a lab's client node is named client; `coat lab up` records it)", client)
	}
	return fmt.Errorf("unknown client %q: the known clients are: %s", client, strings.Join(known, ", "))
}

func newUnfollowCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "unfollow NAME",
		Short: "Stop moving a container after its client (coat follow)",
		Args:  containerArg,
		RunE: withSession(func(ctx context.Context, cmd *cobra.Command, s *session, args []string) error {
			name := args[0]
			ctx, cancel := context.WithTimeout(ctx, followTimeout)
			defer cancel()
			if _, err := s.record(ctx, name); err != nil {
				return err
			}
			had, err := s.st.Unfollow(ctx, name)
			if err != nil {
				return err
			}
			if !had {
				fmt.Fprintf(cmd.OutOrStdout(), "%s follows no client: nothing changed\n", name)
				return nil
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s follows no client any more: it stays on its host\n", name)
			return nil
		}),
	}
}

// followsByContainer maps each following container to its client.
func followsByContainer(ctx context.Context, s *session) (map[string]string, error) {
	ctx, cancel := context.WithTimeout(ctx, followTimeout)
	defer cancel()
	fs, err := s.st.Follows(ctx)
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, f := range fs {
		out[f.Container] = f.Client
	}
	return out, nil
}
