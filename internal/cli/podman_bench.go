package cli

// The bench's podman mode: the paper artifact's own migration path, run
// for real beside COAT's in the same lab (issue 11, item 5).
//
// The artifact ran Podman containers on an Open vSwitch overlay and moved
// one with `podman container checkpoint --tcp-established --export`, scp
// of the archive to the destination, and `podman container restore
// --import --tcp-established` there. Here the container runs under Podman
// (with runc, the runtime COAT uses, and the same CRIU) in a network
// namespace of its own whose veth is a port of the source host's overlay
// bridge, with an overlay IP and MAC of its own, exactly like a COAT
// container; the archive crosses the lab's underlay (with its link
// emulation) by scp to an sshd that listens on the destination node's
// underlay address only, for the length of the bench. After the copy the
// namespace is made again on the destination's bridge (same path, IP and
// MAC: the whole lab shares one filesystem, so Podman finds it where the
// archive says), the container is restored into it, and a gratuitous ARP
// tells the overlay where it is. No frame is held: that is COAT's.
//
// Two settings make Podman work on this machine kind and are said in the
// report: `--cgroup-manager cgroupfs` (no systemd here) and explicit
// --ulimit values below the current ones (without CAP_SYS_RESOURCE, runc
// cannot raise Podman's default limits). GODEBUG=multipathtcp=0 goes into
// the container's environment as COAT's runtime puts it there: CRIU cannot
// dump the MPTCP sockets Go listens on by default.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/coat-project/coat/internal/api"
	"github.com/coat-project/coat/internal/lab"
	"github.com/coat-project/coat/internal/overlay"
	"github.com/coat-project/coat/internal/store"
)

// podmanAvailable returns Podman's version, or why it cannot be used.
func podmanAvailable() (string, error) {
	for _, bin := range []string{"podman", "scp", "ssh-keygen", "/usr/sbin/sshd"} {
		if _, err := exec.LookPath(bin); err != nil {
			return "", fmt.Errorf("%s is not installed (`make bench` installs podman and openssh-server; or apt-get install podman openssh-server): %w", bin, err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "podman", "--version").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("podman --version: %v: %s", err, strings.TrimSpace(string(out)))
	}
	return strings.TrimSpace(string(out)), nil
}

// podmanBench is the PodmanOps of benchOps.
type podmanBench struct {
	st  *lab.State
	ips func(ctx context.Context) (map[string]bool, error) // overlay IPs in use

	mu       sync.Mutex
	dir      string // keys, sshd config, archives (0700)
	sshd     *exec.Cmd
	pods     map[string]podman
	imported map[string]bool // lab images imported into Podman by this bench
}

type podman struct {
	host string
	ep   overlay.Endpoint
}

var podmanGlobal = []string{"--cgroup-manager", "cgroupfs"}

func podmanCmd(ctx context.Context, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, "podman", append(append([]string(nil), podmanGlobal...), args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("podman %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return out, nil
}

// image makes the lab image name available to Podman: imported from the
// lab's image directory once per bench (not kept from an earlier bench:
// the lab's images are rebuilt with the binaries they carry).
func (p *podmanBench) image(ctx context.Context, name string) (string, error) {
	ref := "localhost/coat-bench-" + name
	p.mu.Lock()
	done := p.imported[name]
	p.mu.Unlock()
	if done {
		return ref, nil
	}
	dir := filepath.Join(lab.BaseDir, ".images", name)
	if _, err := os.Stat(dir); err != nil {
		return "", fmt.Errorf("lab image %s: %w", name, err)
	}
	tarball := filepath.Join(p.dir, name+".tar")
	defer os.Remove(tarball)
	if out, err := exec.CommandContext(ctx, "tar", "-C", dir, "-cf", tarball, ".").CombinedOutput(); err != nil {
		return "", fmt.Errorf("tar %s: %v: %s", dir, err, out)
	}
	if _, err := podmanCmd(ctx, "import", tarball, ref); err != nil {
		return "", err
	}
	p.mu.Lock()
	p.imported[name] = true
	p.mu.Unlock()
	return ref, nil
}

func (p *podmanBench) init(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.dir != "" {
		return nil
	}
	dir := filepath.Join(p.st.Dir, "podman")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	p.dir = dir
	p.pods = map[string]podman{}
	p.imported = map[string]bool{}
	return nil
}

// startSSHD starts an sshd in node's namespace, listening on its underlay
// address only, that takes the bench's own key and nothing else.
func (p *podmanBench) startSSHD(ctx context.Context, node string) (string, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	addr := p.st.UnderlayIP(node).String()
	if p.sshd != nil {
		return addr, nil
	}
	key := func(f string) error {
		_ = os.Remove(f)
		_ = os.Remove(f + ".pub")
		out, err := exec.CommandContext(ctx, "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", f).CombinedOutput()
		if err != nil {
			return fmt.Errorf("ssh-keygen: %v: %s", err, out)
		}
		return nil
	}
	hostKey, clientKey := filepath.Join(p.dir, "host_key"), filepath.Join(p.dir, "client_key")
	if err := key(hostKey); err != nil {
		return "", err
	}
	if err := key(clientKey); err != nil {
		return "", err
	}
	pub, err := os.ReadFile(clientKey + ".pub")
	if err != nil {
		return "", err
	}
	auth := filepath.Join(p.dir, "authorized_keys")
	if err := os.WriteFile(auth, pub, 0o600); err != nil {
		return "", err
	}
	conf := filepath.Join(p.dir, "sshd_config")
	if err := os.WriteFile(conf, []byte(strings.Join([]string{
		"ListenAddress " + addr + ":22",
		"HostKey " + hostKey,
		"AuthorizedKeysFile " + auth,
		"PermitRootLogin prohibit-password",
		"PasswordAuthentication no",
		"KbdInteractiveAuthentication no",
		"UsePAM no",
		"StrictModes no",
		"Subsystem sftp internal-sftp", // scp speaks SFTP since OpenSSH 9
		"PidFile " + filepath.Join(p.dir, "sshd.pid"),
		"",
	}, "\n")), 0o600); err != nil {
		return "", err
	}
	if err := os.MkdirAll("/run/sshd", 0o755); err != nil { // its privilege separation directory
		return "", err
	}
	cmd := exec.Command("/usr/sbin/sshd", "-D", "-e", "-f", conf)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	logf, err := os.OpenFile(filepath.Join(p.dir, "sshd.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return "", err
	}
	defer logf.Close()
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := lab.InNetNS(p.st.NetNSPath(node), cmd.Start); err != nil {
		return "", fmt.Errorf("start sshd on %s: %w", node, err)
	}
	p.sshd = cmd
	// Ready once it accepts (asked from the source node, over the underlay).
	deadline := time.Now().Add(10 * time.Second)
	for {
		var c net.Conn
		derr := lab.InNetNS(p.st.NetNSPath(lab.EdgeName(1)), func() error {
			var err error
			c, err = net.DialTimeout("tcp", addr+":22", time.Second)
			return err
		})
		if derr == nil {
			c.Close()
			return addr, nil
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("sshd on %s does not answer: %w (log: %s)", node, derr, filepath.Join(p.dir, "sshd.log"))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// close stops sshd and removes the keys, the archives and the images it
// imported into Podman.
func (p *podmanBench) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for name := range p.imported {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		_, _ = podmanCmd(ctx, "rmi", "-f", "localhost/coat-bench-"+name)
		cancel()
	}
	p.imported = nil
	if p.sshd != nil {
		_ = p.sshd.Process.Kill()
		_ = p.sshd.Wait()
		p.sshd = nil
	}
	if p.dir != "" {
		_ = os.RemoveAll(p.dir)
		p.dir = ""
	}
}

func (p *podmanBench) netnsPath(name string) string { return filepath.Join(p.dir, "netns", name) }

// freeIP picks an overlay address no container record holds, from the
// top of the subnet down (COAT allocates from the bottom up).
func (p *podmanBench) freeIP(ctx context.Context) (net.IP, error) {
	used, err := p.ips(ctx)
	if err != nil {
		return nil, err
	}
	sn := p.st.OverlaySubnet()
	ones, bits := sn.Mask.Size()
	size := 1 << (bits - ones)
	base := sn.IP.To4()
	for i := size - 20; i > size/2; i-- {
		ip := net.IPv4(base[0], base[1], base[2]+byte(i>>8), base[3]+byte(i)).To4()
		p.mu.Lock()
		taken := used[ip.String()]
		for _, pod := range p.pods {
			taken = taken || pod.ep.Addr.IP.Equal(ip)
		}
		p.mu.Unlock()
		if !taken {
			return ip, nil
		}
	}
	return nil, errors.New("no free overlay address for a podman container")
}

// attach makes name's namespace on host's overlay bridge.
func (p *podmanBench) attach(host string, ep overlay.Endpoint) error {
	if err := overlay.CreateNetNS(ep.NetNS); err != nil {
		return err
	}
	h, err := overlay.Open(p.st.NetNSPath(host))
	if err != nil {
		return err
	}
	defer h.Close()
	return h.AttachEndpoint(ep, true)
}

func (p *podmanBench) detach(host string, ep overlay.Endpoint) error {
	h, err := overlay.Open(p.st.NetNSPath(host))
	if err != nil {
		return err
	}
	defer h.Close()
	err = h.DetachEndpoint(ep.HostVeth)
	return errors.Join(err, overlay.DeleteNetNS(ep.NetNS))
}

// RunPodman implements bench.PodmanOps.
func (p *podmanBench) RunPodman(ctx context.Context, host, name, image string, args []string) (string, error) {
	if err := p.init(ctx); err != nil {
		return "", err
	}
	ref, err := p.image(ctx, image)
	if err != nil {
		return "", err
	}
	ip, err := p.freeIP(ctx)
	if err != nil {
		return "", err
	}
	ep := overlay.Endpoint{
		NetNS:    p.netnsPath(name),
		HostVeth: fmt.Sprintf("pv%x", ip[3]),
		Addr:     net.IPNet{IP: ip, Mask: p.st.OverlaySubnet().Mask},
		MAC:      store.MACFor(ip),
	}
	if err := p.attach(host, ep); err != nil {
		return "", fmt.Errorf("podman container's network on %s: %w", host, err)
	}
	p.mu.Lock()
	p.pods[name] = podman{host: host, ep: ep}
	p.mu.Unlock()
	run := []string{"run", "-d", "--name", name, "--runtime", "runc", "--network", "ns:" + ep.NetNS,
		"--env", "GODEBUG=multipathtcp=0", "--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096", ref}
	if _, err := podmanCmd(ctx, append(run, args...)...); err != nil {
		return "", err
	}
	if err := overlay.GratuitousARP(ep.NetNS, "eth0", ip, ep.MAC, 1); err != nil {
		return "", err
	}
	return ip.String(), nil
}

// WaitListenPodman implements bench.PodmanOps.
func (p *podmanBench) WaitListenPodman(ctx context.Context, name string, port int) error {
	p.mu.Lock()
	pod, ok := p.pods[name]
	p.mu.Unlock()
	if !ok {
		return fmt.Errorf("no podman container %s", name)
	}
	return waitListenIn(ctx, pod.ep.NetNS, name, port)
}

// MigratePodman implements bench.PodmanOps: the artifact's script.
func (p *podmanBench) MigratePodman(ctx context.Context, name, to string) (*api.MigrateResult, error) {
	p.mu.Lock()
	pod, ok := p.pods[name]
	p.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("no podman container %s", name)
	}
	addr, err := p.startSSHD(ctx, to)
	if err != nil {
		return nil, err
	}
	src := filepath.Join(p.dir, name+"-export.tar.gz")
	dst := filepath.Join(p.dir, name+"-import.tar.gz")
	defer os.Remove(src)
	defer os.Remove(dst)
	t0 := time.Now()
	if _, err := podmanCmd(ctx, "container", "checkpoint", "--tcp-established", "--export", src, name); err != nil {
		return nil, err
	}
	if _, err := podmanCmd(ctx, "rm", name); err != nil {
		return nil, err
	}
	t1 := time.Now()
	scp := exec.CommandContext(ctx, "scp", "-q", "-i", filepath.Join(p.dir, "client_key"),
		"-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
		src, "root@"+addr+":"+dst)
	var out strings.Builder
	scp.Stdout, scp.Stderr = &out, &out
	if err := lab.InNetNS(p.st.NetNSPath(pod.host), scp.Start); err != nil {
		return nil, err
	}
	if err := scp.Wait(); err != nil {
		return nil, fmt.Errorf("scp to %s: %v: %s", to, err, strings.TrimSpace(out.String()))
	}
	st, err := os.Stat(dst)
	if err != nil {
		return nil, err
	}
	t2 := time.Now()
	if err := p.detach(pod.host, pod.ep); err != nil {
		return nil, err
	}
	if err := p.attach(to, pod.ep); err != nil {
		return nil, err
	}
	p.mu.Lock()
	p.pods[name] = podman{host: to, ep: pod.ep}
	p.mu.Unlock()
	if _, err := podmanCmd(ctx, "container", "restore", "--tcp-established", "--import", dst); err != nil {
		return nil, err
	}
	if err := overlay.GratuitousARP(pod.ep.NetNS, "eth0", pod.ep.Addr.IP, pod.ep.MAC, 3); err != nil {
		return nil, err
	}
	t3 := time.Now()
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	return &api.MigrateResult{
		CheckpointMS: ms(t1.Sub(t0)), TransferMS: ms(t2.Sub(t1)), RestoreMS: ms(t3.Sub(t2)),
		TotalMS: ms(t3.Sub(t0)), DowntimeMS: ms(t3.Sub(t0)), Bytes: st.Size(),
	}, nil
}

// RemovePodman implements bench.PodmanOps.
func (p *podmanBench) RemovePodman(ctx context.Context, name string) error {
	p.mu.Lock()
	pod, ok := p.pods[name]
	delete(p.pods, name)
	p.mu.Unlock()
	_, err := podmanCmd(ctx, "rm", "-f", "--time", "0", name)
	if ok {
		err = errors.Join(err, p.detach(pod.host, pod.ep))
	}
	return err
}
