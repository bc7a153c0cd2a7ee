package oci

import (
	"reflect"
	"strings"
	"testing"

	"github.com/coat-project/coat/internal/runtime"
)

func TestRunOf(t *testing.T) {
	c := Config{Entrypoint: []string{"/bin/app"}, Cmd: []string{"serve", "-v"}, Env: []string{"PATH=/bin", "A=1"}, WorkingDir: "/srv", User: "app"}
	users := ParsePasswd([]byte("root:x:0:0::/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\nbad line\n"))
	groups := ParseGroup([]byte("root:x:0:\nstaff:x:50:app\n"))
	for _, tc := range []struct {
		name string
		c    Config
		o    Overrides
		want Run
		err  string
	}{
		{name: "image defaults", c: c, want: Run{Args: []string{"/bin/app", "serve", "-v"}, Env: []string{"PATH=/bin", "A=1"}, Cwd: "/srv", UID: 1000, GID: 1001}},
		{name: "args replace Cmd", c: c, o: Overrides{Args: []string{"check"}}, want: Run{Args: []string{"/bin/app", "check"}, Env: []string{"PATH=/bin", "A=1"}, Cwd: "/srv", UID: 1000, GID: 1001}},
		{name: "overrides", c: c, o: Overrides{Env: []string{"A=2", "B=3"}, Workdir: "/tmp", User: "0:staff"},
			want: Run{Args: []string{"/bin/app", "serve", "-v"}, Env: []string{"PATH=/bin", "A=2", "B=3"}, Cwd: "/tmp", UID: 0, GID: 50}},
		{name: "numeric uid with entry", c: Config{Cmd: []string{"sh"}, User: "1000"}, want: Run{Args: []string{"sh"}, Cwd: "/", UID: 1000, GID: 1001}},
		{name: "numeric uid without entry", c: Config{Cmd: []string{"sh"}}, o: Overrides{User: "4242"}, want: Run{Args: []string{"sh"}, Cwd: "/", UID: 4242}},
		{name: "no command", c: Config{}, err: "no Entrypoint or Cmd"},
		{name: "unknown user", c: c, o: Overrides{User: "nobody"}, err: `user "nobody" is not in the image's /etc/passwd`},
		{name: "unknown group", c: c, o: Overrides{User: "app:wheel"}, err: `group "wheel" is not in the image's /etc/group`},
		{name: "relative workdir", c: c, o: Overrides{Workdir: "srv"}, err: "not absolute"},
	} {
		got, err := RunOf(tc.c, users, groups, tc.o)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%s: err = %v, want %q", tc.name, err, tc.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s: got %+v, want %+v", tc.name, got, tc.want)
		}
	}
}

func TestMergeEnv(t *testing.T) {
	got := runtime.MergeEnv([]string{"PATH=/a", "HOME=/root"}, []string{"PATH=/b", "X"}, []string{"HOME=/h"})
	want := []string{"PATH=/b", "HOME=/h", "X"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("MergeEnv = %v, want %v", got, want)
	}
}
