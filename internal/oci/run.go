package oci

import (
	"bufio"
	"bytes"
	"fmt"
	"strconv"
	"strings"

	"github.com/coat-project/coat/internal/runtime"
)

// ParsePasswd reads an /etc/passwd: user name -> "uid:gid".
func ParsePasswd(b []byte) map[string]string {
	out := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Split(sc.Text(), ":")
		if len(f) < 4 || f[0] == "" || strings.HasPrefix(f[0], "#") {
			continue
		}
		if _, err := strconv.ParseUint(f[2], 10, 32); err != nil {
			continue
		}
		if _, err := strconv.ParseUint(f[3], 10, 32); err != nil {
			continue
		}
		if _, ok := out[f[0]]; !ok {
			out[f[0]] = f[2] + ":" + f[3]
		}
	}
	return out
}

// ParseGroup reads an /etc/group: group name -> "gid".
func ParseGroup(b []byte) map[string]string {
	out := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Split(sc.Text(), ":")
		if len(f) < 3 || f[0] == "" || strings.HasPrefix(f[0], "#") {
			continue
		}
		if _, err := strconv.ParseUint(f[2], 10, 32); err != nil {
			continue
		}
		if _, ok := out[f[0]]; !ok {
			out[f[0]] = f[2]
		}
	}
	return out
}

// ResolveUser turns an image's or --user's USER (name, uid, name:group,
// uid:gid, "" for root) into numeric ids with the image's users and
// groups, as `podman run` does: a uid without a passwd entry gets gid 0.
func ResolveUser(user string, users, groups map[string]string) (uid, gid uint32, err error) {
	if user == "" {
		return 0, 0, nil
	}
	u, g, hasGroup := strings.Cut(user, ":")
	num := func(s string) (uint32, bool) {
		n, err := strconv.ParseUint(s, 10, 32)
		return uint32(n), err == nil
	}
	if n, ok := num(u); ok {
		uid = n
		for _, ids := range users {
			us, gs, _ := strings.Cut(ids, ":")
			if us == u {
				gid, _ = num(gs)
				break
			}
		}
	} else {
		ids, ok := users[u]
		if !ok {
			return 0, 0, fmt.Errorf("user %q is not in the image's /etc/passwd: give a numeric uid[:gid] with --user", u)
		}
		us, gs, _ := strings.Cut(ids, ":")
		uid, _ = num(us)
		gid, _ = num(gs)
	}
	if hasGroup {
		if n, ok := num(g); ok {
			gid = n
		} else if gs, ok := groups[g]; ok {
			gid, _ = num(gs)
		} else {
			return 0, 0, fmt.Errorf("group %q is not in the image's /etc/group: give a numeric gid with --user uid:gid", g)
		}
	}
	return uid, gid, nil
}

// Run is what a container runs, from its image's configuration and the
// command line.
type Run struct {
	Args     []string
	Env      []string
	Cwd      string
	UID, GID uint32
}

// Overrides are `coat run`'s: args replace the image's Cmd (after its
// Entrypoint); Env entries are added after the image's (a later KEY wins);
// Workdir and User replace the image's.
type Overrides struct {
	Args    []string
	Env     []string
	Workdir string
	User    string
}

// RunOf applies o to an image's configuration c (users and groups are the
// image's /etc/passwd and /etc/group, for user names).
func RunOf(c Config, users, groups map[string]string, o Overrides) (Run, error) {
	cmd := c.Cmd
	if len(o.Args) > 0 {
		cmd = o.Args
	}
	args := append(append([]string(nil), c.Entrypoint...), cmd...)
	if len(args) == 0 {
		return Run{}, fmt.Errorf("no command: the image has no Entrypoint or Cmd: give the command after the image name")
	}
	r := Run{Args: args, Env: runtime.MergeEnv(c.Env, o.Env), Cwd: c.WorkingDir}
	if o.Workdir != "" {
		r.Cwd = o.Workdir
	}
	if r.Cwd == "" {
		r.Cwd = "/"
	}
	if !strings.HasPrefix(r.Cwd, "/") {
		return Run{}, fmt.Errorf("working directory %q is not absolute: give --workdir /PATH", r.Cwd)
	}
	user := c.User
	if o.User != "" {
		user = o.User
	}
	var err error
	r.UID, r.GID, err = ResolveUser(user, users, groups)
	return r, err
}
