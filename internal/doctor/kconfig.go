package doctor

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"strings"
)

// KConfig is a kernel build configuration: option name (CONFIG_...) to
// value ("y", "m", a string or number). "# CONFIG_X is not set" is "n".
type KConfig map[string]string

// Enabled reports whether opt is built in or a module.
func (c KConfig) Enabled(opt string) bool { return c[opt] == "y" || c[opt] == "m" }

// ParseKConfig reads a kernel config, gzip'd (as /proc/config.gz) or not.
func ParseKConfig(b []byte) (KConfig, error) {
	var r io.Reader = bytes.NewReader(b)
	if len(b) >= 2 && b[0] == 0x1f && b[1] == 0x8b {
		zr, err := gzip.NewReader(r)
		if err != nil {
			return nil, fmt.Errorf("kernel config: %w", err)
		}
		defer zr.Close()
		r = zr
	}
	c := KConfig{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		l := strings.TrimSpace(sc.Text())
		if opt, ok := strings.CutPrefix(l, "# "); ok {
			if opt, ok = strings.CutSuffix(opt, " is not set"); ok && strings.HasPrefix(opt, "CONFIG_") {
				c[opt] = "n"
			}
			continue
		}
		if k, v, ok := strings.Cut(l, "="); ok && strings.HasPrefix(k, "CONFIG_") {
			c[k] = strings.Trim(v, `"`)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("kernel config: %w", err)
	}
	if len(c) == 0 {
		return nil, errors.New("kernel config: no CONFIG_ options")
	}
	return c, nil
}

// LoadKConfig reads the running kernel's config from /proc/config.gz or
// else /boot/config-RELEASE, and says which file it used.
func LoadKConfig(env Env, release string) (KConfig, string, error) {
	paths := []string{"/proc/config.gz"}
	if release != "" {
		paths = append(paths, "/boot/config-"+release)
	}
	var errs []error
	for _, p := range paths {
		b, err := env.ReadFile(p)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		c, err := ParseKConfig(b)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", p, err))
			continue
		}
		return c, p, nil
	}
	return nil, "", errors.Join(errs...)
}

// exists reports whether path exists: reading a directory or a namespace
// file fails, but not with "not exist".
func exists(env Env, path string) bool {
	_, err := env.ReadFile(path)
	return err == nil || !errors.Is(err, fs.ErrNotExist)
}

// probe is a guess at a feature without the kernel config: whether it is
// there, and whether the guess is sure (known).
type probe func(env Env, release string) (present, known bool, how string)

// probePath: the feature is there iff path exists.
func probePath(path string) probe {
	return func(env Env, _ string) (bool, bool, string) {
		if exists(env, path) {
			return true, true, path + " exists"
		}
		return false, true, path + " is missing"
	}
}

// probeModule looks for a kernel module loaded (/sys/module, /proc/modules)
// or available (modules.builtin, modules.dep of the running kernel).
func probeModule(mod string) probe {
	return func(env Env, release string) (bool, bool, string) {
		if exists(env, "/sys/module/"+mod) {
			return true, true, "module " + mod + " loaded or built in"
		}
		if b, err := env.ReadFile("/proc/modules"); err == nil && hasLinePrefix(b, mod+" ") {
			return true, true, "module " + mod + " loaded"
		}
		known := false
		for _, f := range []string{"modules.builtin", "modules.dep"} {
			b, err := env.ReadFile("/lib/modules/" + release + "/" + f)
			if err != nil {
				continue
			}
			known = true
			if bytes.Contains(b, []byte("/"+mod+".ko")) {
				return true, true, "module " + mod + " available"
			}
		}
		if !known {
			return false, false, "module " + mod + " not loaded; no module list for " + release
		}
		return false, true, "no module " + mod
	}
}

// probeFilesystem looks in /proc/filesystems, then for a module.
func probeFilesystem(fstype string) probe {
	return func(env Env, release string) (bool, bool, string) {
		if b, err := env.ReadFile("/proc/filesystems"); err == nil && hasFilesystem(b, fstype) {
			return true, true, fstype + " in /proc/filesystems"
		}
		return probeModule(fstype)(env, release)
	}
}

func hasFilesystem(b []byte, fstype string) bool {
	for l := range strings.Lines(string(b)) {
		f := strings.Fields(l)
		if len(f) > 0 && f[len(f)-1] == fstype {
			return true
		}
	}
	return false
}

func hasLinePrefix(b []byte, prefix string) bool {
	for l := range strings.Lines(string(b)) {
		if strings.HasPrefix(l, prefix) {
			return true
		}
	}
	return false
}
