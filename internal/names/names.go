// Package names validates the names that reach COAT from outside (the
// CLI's arguments, the agents' HTTP API, configuration files) before
// anything is changed, and maps image names to safe on-disk keys.
//
//   - Container and host names are DNS labels of at most 32 characters:
//     lowercase letters, digits and inner dashes. They become directory,
//     namespace, cgroup and certificate file names as they are, which is
//     safe only because nothing else passes.
//   - Image names are references, name[:tag][@sha256:HEX]: the name is
//     one or more '/'-separated components of lowercase letters and
//     digits, joined inside a component by single '.', '_' or '-' (so never
//     "." or ".."), the first of several may end with a registry's :PORT
//     (127.0.0.1:5000/app), the tag 1-128 letters, digits, '_', '.' and '-' not
//     starting with '.' or '-', the digest "sha256:" and 64 lowercase hex
//     digits (the manifest's; the registry's answer is checked against
//     it). "NAME:latest" is the same image as "NAME".
//     An image is never stored under its name as given but under its Key,
//     a single path element that cannot be empty, ".", ".." or hidden.
package names

import (
	"fmt"
	"regexp"
	"strings"
)

// MaxName is the longest container or host name.
const MaxName = 32

var labelRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$`)

// Container checks a container name.
func Container(s string) error {
	if !labelRE.MatchString(s) {
		return fmt.Errorf("invalid name %q: a container name is 1-32 lowercase letters, digits and dashes, starting and ending with a letter or digit", s)
	}
	return nil
}

// Host checks a host (agent) name.
func Host(s string) error {
	if !labelRE.MatchString(s) {
		return fmt.Errorf("invalid host name %q: a host name is 1-32 lowercase letters, digits and dashes, starting and ending with a letter or digit", s)
	}
	return nil
}

// Label reports whether s is a valid container or host name.
func Label(s string) bool { return labelRE.MatchString(s) }

// MaxImage is the longest image reference accepted (its key, plus the
// agent's temporary-name affixes, stays within a file name's 255 bytes).
const MaxImage = 200

var (
	componentRE = regexp.MustCompile(`^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$`)
	tagRE       = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$`)
	portRE      = regexp.MustCompile(`^(.+):[0-9]{1,5}$`)
)

// Image is a parsed image reference.
type Image struct {
	Name string // e.g. "sample" or "lab/redis"
	Tag  string // "" for latest
	// Digest is the manifest's "sha256:HEX" for a reference by digest
	// (NAME@sha256:HEX or NAME:TAG@sha256:HEX), else "".
	Digest string
}

// String is the canonical reference: "NAME", "NAME:TAG" (never
// ":latest"), followed by "@sha256:HEX" for a reference by digest.
func (im Image) String() string {
	s := im.Name
	if im.Tag != "" {
		s += ":" + im.Tag
	}
	if im.Digest != "" {
		s += "@" + im.Digest
	}
	return s
}

// Key is the image's directory name on disk: the reference without its
// digest with '/' written as '+' and ':' as '@' (neither can appear in
// it, so two such keys never collide: an '@' before the first '+' is a
// port's, after the last '+' a tag's), then for a reference by digest
// "=sha256-HEX" ('=' appears nowhere else, so the key still names one
// reference only). It is one path element, with no ':' (overlayfs's
// lowerdir separator), that never starts with '.' (see the package
// comment).
func (im Image) Key() string {
	k := strings.NewReplacer("/", "+", ":", "@").Replace(Image{Name: im.Name, Tag: im.Tag}.String())
	if im.Digest != "" {
		k += "=" + strings.Replace(im.Digest, ":", "-", 1)
	}
	return k
}

const imageRule = "an image name is NAME[:TAG][@sha256:HEX]: NAME is lowercase letters and digits, separated by single '.', '_' or '-', in '/'-separated parts, the first of which may be a registry with a port (e.g. sample, lab/redis, docker.io/library/busybox, 127.0.0.1:5000/app), TAG is letters, digits, '_', '.' and '-' (e.g. 1.2), HEX 64 lowercase hex digits (a manifest's digest)"

var digestRE = regexp.MustCompile(`^sha256:[0-9a-f]{64}$`)

// ParseImage parses an image reference. The error says what is allowed.
func ParseImage(s string) (Image, error) {
	in := s
	bad := func(why string) (Image, error) {
		return Image{}, fmt.Errorf("invalid image %q: %s; %s", in, why, imageRule)
	}
	switch {
	case s == "":
		return bad("empty")
	case len(s) > MaxImage:
		return bad(fmt.Sprintf("longer than %d characters", MaxImage))
	case strings.HasPrefix(s, "/"):
		return bad("it is not a path: no leading '/'")
	case strings.Contains(s, ".."):
		return bad("it is not a path: no '..'")
	}
	var digest string
	if i := strings.IndexByte(s, '@'); i >= 0 {
		s, digest = s[:i], s[i+1:]
		if !digestRE.MatchString(digest) {
			return bad(fmt.Sprintf("bad digest %q: want sha256: and 64 lowercase hex digits", digest))
		}
	}
	name, tag := s, ""
	if i := strings.LastIndexByte(s, ':'); i >= 0 && !strings.Contains(s[i+1:], "/") {
		name, tag = s[:i], s[i+1:]
		if !tagRE.MatchString(tag) {
			return bad(fmt.Sprintf("bad tag %q", tag))
		}
	}
	parts := strings.Split(name, "/")
	for i, c := range parts {
		if i == 0 && len(parts) > 1 {
			// A registry host may have a port: 127.0.0.1:5000/app.
			if m := portRE.FindStringSubmatch(c); m != nil {
				c = m[1]
			}
		}
		if c == "" {
			return bad("empty part between '/'")
		}
		if strings.ToLower(c) != c {
			return bad("names are lowercase")
		}
		if !componentRE.MatchString(c) {
			return bad(fmt.Sprintf("bad part %q", c))
		}
	}
	if tag == "latest" {
		tag = ""
	}
	return Image{Name: name, Tag: tag, Digest: digest}, nil
}

// ImageKey is ParseImage(s).Key().
func ImageKey(s string) (string, error) {
	im, err := ParseImage(s)
	if err != nil {
		return "", err
	}
	return im.Key(), nil
}
