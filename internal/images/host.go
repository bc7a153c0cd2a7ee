package images

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// hostFiles resolves each binary on the host and lists it together with the
// shared libraries and dynamic loader it needs.
func hostFiles(binaries []string) ([]file, error) {
	var files []file
	for _, name := range binaries {
		path, err := exec.LookPath(name)
		if err != nil {
			return nil, fmt.Errorf("find %s: %w", name, err)
		}
		if path, err = filepath.Abs(path); err != nil {
			return nil, fmt.Errorf("find %s: %w", name, err)
		}
		files = append(files, file{dest: "/usr/bin/" + filepath.Base(path), src: path, mode: 0o755})
		libs, err := sharedLibs(path)
		if err != nil {
			return nil, err
		}
		for _, lib := range libs {
			mode, err := libMode(lib)
			if err != nil {
				return nil, err
			}
			files = append(files, file{dest: lib, src: lib, mode: mode})
		}
	}
	return files, nil
}

// libMode is the host file's permission bits, minus group/other write and
// plus read for everyone.
func libMode(path string) (fs.FileMode, error) {
	st, err := os.Stat(path)
	if err != nil {
		return 0, fmt.Errorf("stat %s: %w", path, err)
	}
	return st.Mode().Perm()&^0o022 | 0o444, nil
}

// sharedLibs runs ldd on path and returns the absolute paths of the shared
// libraries and the dynamic loader it needs, as the loader looks them up.
// A static binary needs none.
func sharedLibs(path string) ([]string, error) {
	ldd, err := exec.LookPath("ldd")
	if err != nil {
		return nil, fmt.Errorf("find ldd: %w", err)
	}
	var out bytes.Buffer
	cmd := exec.Command(ldd, path)
	cmd.Stdout = &out
	cmd.Stderr = &out
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	runErr := cmd.Run()
	text := out.String()
	if strings.Contains(text, "not a dynamic executable") || strings.Contains(text, "statically linked") {
		return nil, nil
	}
	if runErr != nil {
		return nil, fmt.Errorf("ldd %s: %w: %s", path, runErr, strings.TrimSpace(text))
	}
	libs, err := parseLdd(text)
	if err != nil {
		return nil, fmt.Errorf("ldd %s: %w", path, err)
	}
	return libs, nil
}

// parseLdd extracts library paths from ldd output such as:
//
//	linux-vdso.so.1 (0x00007ffd...)
//	libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f...)
//	/lib64/ld-linux-x86-64.so.2 (0x00007f...)
//
// Virtual objects without a file (the vDSO) are skipped; a library that is
// "not found" is an error.
func parseLdd(out string) ([]string, error) {
	var libs, missing []string
	seen := make(map[string]bool)
	for _, line := range strings.Split(out, "\n") {
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		name, target, arrow := strings.Cut(line, "=>")
		field := name
		if arrow {
			target = strings.TrimSpace(target)
			if strings.HasPrefix(target, "not found") {
				missing = append(missing, strings.TrimSpace(name))
				continue
			}
			field = target
		}
		p, _, _ := strings.Cut(strings.TrimSpace(field), " ")
		if !filepath.IsAbs(p) {
			continue // vDSO or an unexpected line
		}
		p = filepath.Clean(p)
		if !seen[p] {
			seen[p] = true
			libs = append(libs, p)
		}
	}
	if len(missing) > 0 {
		return nil, errors.New("missing libraries: " + strings.Join(missing, ", "))
	}
	return libs, nil
}
