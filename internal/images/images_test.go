package images

import (
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
)

// buildStaticBinary compiles a trivial static Go program printing msg.
func buildStaticBinary(t *testing.T, msg string) string {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = filepath.Join(runtime.GOROOT(), "bin", "go")
		if _, err := os.Stat(goBin); err != nil {
			t.Skip("go toolchain not found")
		}
	}
	src := t.TempDir()
	prog := "package main\n\nimport \"fmt\"\n\nfunc main() { fmt.Println(" + `"` + msg + `"` + ") }\n"
	if err := os.WriteFile(filepath.Join(src, "main.go"), []byte(prog), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "go.mod"), []byte("module hello\n\ngo 1.21\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), "hello")
	cmd := exec.Command(goBin, "build", "-o", bin, ".")
	cmd.Dir = src
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=", "GOWORK=off")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// runChrooted runs argv inside root as root and returns its output.
func runChrooted(t *testing.T, root string, argv ...string) string {
	t.Helper()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = "/"
	cmd.Env = []string{"PATH=/usr/bin:/bin"}
	cmd.SysProcAttr = &syscall.SysProcAttr{Chroot: root}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("chroot %s %v: %v\n%s", root, argv, err, out)
	}
	return string(out)
}

// checkTree verifies the skeleton and that nothing but /tmp is world-writable.
func checkTree(t *testing.T, root string) {
	t.Helper()
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		if info.Mode()&fs.ModeSymlink == 0 && info.Mode().Perm()&0o002 != 0 && rel != "tmp" {
			t.Errorf("%s is world-writable (%v)", rel, info.Mode())
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"proc", "sys", "dev", "etc", "data", "bin", "tmp"} {
		if st, err := os.Stat(filepath.Join(root, d)); err != nil || !st.IsDir() {
			t.Errorf("missing dir /%s: %v", d, err)
		}
	}
	if st, err := os.Stat(filepath.Join(root, "tmp")); err == nil && st.Mode()&(fs.ModeSticky|fs.ModePerm) != fs.ModeSticky|0o777 {
		t.Errorf("/tmp mode %v, want 1777", st.Mode())
	}
	for _, f := range []string{"etc/passwd", "etc/group", "etc/hosts", MarkerFile} {
		b, err := os.ReadFile(filepath.Join(root, f))
		if err != nil || len(b) == 0 {
			t.Errorf("missing file /%s: %v", f, err)
		}
	}
	if b, _ := os.ReadFile(filepath.Join(root, "etc/passwd")); !strings.HasPrefix(string(b), "root:x:0:0:") {
		t.Errorf("/etc/passwd = %q", b)
	}
	for _, leftover := range []string{root + ".tmp", root + ".old"} {
		if _, err := os.Lstat(leftover); err == nil {
			t.Errorf("leftover %s", leftover)
		}
	}
}

func TestBuildStatic(t *testing.T) {
	bin := buildStaticBinary(t, "hello-v1")
	root := filepath.Join(t.TempDir(), "images", "static")
	if err := BuildStatic(root, bin, "x"); err != nil {
		t.Fatal(err)
	}
	checkTree(t, root)
	st1, err := os.Stat(filepath.Join(root, "bin", "x"))
	if err != nil {
		t.Fatal(err)
	}
	if st1.Mode().Perm() != 0o755 {
		t.Errorf("/bin/x mode %v, want 0755", st1.Mode())
	}

	// Unchanged input: the image is left as it is.
	if err := BuildStatic(root, bin, "x"); err != nil {
		t.Fatal(err)
	}
	st2, err := os.Stat(filepath.Join(root, "bin", "x"))
	if err != nil {
		t.Fatal(err)
	}
	if !os.SameFile(st1, st2) {
		t.Error("second build with the same input rebuilt the image")
	}

	if os.Geteuid() == 0 {
		if out := runChrooted(t, root, "/bin/x"); strings.TrimSpace(out) != "hello-v1" {
			t.Errorf("chrooted /bin/x printed %q", out)
		}
	}

	// Changed binary: the image is rebuilt.
	bin2 := buildStaticBinary(t, "hello-v2")
	if err := BuildStatic(root, bin2, "x"); err != nil {
		t.Fatal(err)
	}
	checkTree(t, root)
	st3, err := os.Stat(filepath.Join(root, "bin", "x"))
	if err != nil {
		t.Fatal(err)
	}
	if os.SameFile(st1, st3) {
		t.Error("build with a new binary did not rebuild the image")
	}
	if os.Geteuid() == 0 {
		if out := runChrooted(t, root, "/bin/x"); strings.TrimSpace(out) != "hello-v2" {
			t.Errorf("chrooted /bin/x printed %q after rebuild", out)
		}
	} else {
		t.Log("not root: skipping chroot checks")
	}
}

func TestBuildStaticErrors(t *testing.T) {
	dir := t.TempDir()
	if err := BuildStatic(filepath.Join(dir, "a"), "/nonexistent/binary", "x"); err == nil {
		t.Error("missing binary: want error")
	}
	for _, name := range []string{"", "a/b", ".."} {
		if err := BuildStatic(filepath.Join(dir, "b"), "/bin/true", name); err == nil {
			t.Errorf("name %q: want error", name)
		}
	}
	if _, err := os.Lstat(filepath.Join(dir, "a.tmp")); err == nil {
		t.Error("failed build left a.tmp behind")
	}
}

func TestBuildFromHost(t *testing.T) {
	bins := []string{"sockperf", "iperf3"}
	for _, b := range bins {
		if _, err := exec.LookPath(b); err != nil {
			t.Skipf("%s not installed (apt-get install -y sockperf iperf3)", b)
		}
	}
	root := filepath.Join(t.TempDir(), "host")
	if err := BuildFromHost(root, bins); err != nil {
		t.Fatal(err)
	}
	checkTree(t, root)
	libs, err := sharedLibs(mustLookPath(t, "iperf3"))
	if err != nil {
		t.Fatal(err)
	}
	if len(libs) == 0 {
		t.Fatal("iperf3 has no shared libraries according to ldd")
	}
	for _, lib := range libs {
		st, err := os.Lstat(filepath.Join(root, lib))
		if err != nil || !st.Mode().IsRegular() {
			t.Errorf("library %s not copied as a regular file: %v", lib, err)
		}
	}
	marker, _ := os.ReadFile(filepath.Join(root, MarkerFile))
	if err := BuildFromHost(root, bins); err != nil {
		t.Fatal(err)
	}
	if again, _ := os.ReadFile(filepath.Join(root, MarkerFile)); string(again) != string(marker) {
		t.Error("marker changed on an identical rebuild")
	}
	if os.Geteuid() != 0 {
		t.Skip("not root: skipping chroot checks")
	}
	if out := runChrooted(t, root, "/usr/bin/iperf3", "--version"); !strings.Contains(out, "iperf") {
		t.Errorf("iperf3 --version printed %q", out)
	}
	if out := runChrooted(t, root, "/usr/bin/sockperf", "--version"); !strings.Contains(out, "version") {
		t.Errorf("sockperf --version printed %q", out)
	}
}

func mustLookPath(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestParseLdd(t *testing.T) {
	out := `	linux-vdso.so.1 (0x00007ffd1c5f2000)
	libiperf.so.0 => /lib/x86_64-linux-gnu/libiperf.so.0 (0x00007f2d051e3000)
	libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f2d05001000)
	libm.so.6 => /lib/x86_64-linux-gnu/libm.so.6 (0x00007f2d04f1b000)
	libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f2d05001000)
	/lib64/ld-linux-x86-64.so.2 (0x00007f2d0522c000)
`
	libs, err := parseLdd(out)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"/lib/x86_64-linux-gnu/libiperf.so.0",
		"/lib/x86_64-linux-gnu/libc.so.6",
		"/lib/x86_64-linux-gnu/libm.so.6",
		"/lib64/ld-linux-x86-64.so.2",
	}
	if strings.Join(libs, " ") != strings.Join(want, " ") {
		t.Errorf("parseLdd = %v, want %v", libs, want)
	}
	if _, err := parseLdd("\tlibfoo.so.1 => not found\n"); err == nil || !strings.Contains(err.Error(), "libfoo.so.1") {
		t.Errorf("missing library: err = %v", err)
	}
}
