// Package runtime runs, checkpoints and restores one host's containers with
// runc (through containerd/go-runc) and CRIU.
//
// A container's root filesystem is an overlayfs: its image as the read-only
// lower layer and a per-container upper layer that takes its writes, so a
// migration ships only the upper layer. Its network namespace is made by the
// agent before runc runs (see internal/overlay) and named by path in
// config.json; runc then treats it as external on checkpoint, which is what
// lets the destination restore into a namespace it built with the same IP
// and MAC.
//
// Standard streams: a container's output must survive a checkpoint on one
// host and a restore on another, so it cannot point at a host file or a pipe
// held by the agent. The agent's own binary is bind-mounted read-only at
// /.coat/init and runs first inside the container: it points stdin at the
// container's /dev/null and stdout/stderr at /.coat/log (in the upper layer,
// so it travels with the container), then execs the command. CRIU sees only
// files of the container's own mount namespace. The bound file is a copy of
// the binary named by its content (installInit): a bind whose source was
// replaced (an upgrade) cannot be checkpointed.
//
// The upper layer is the container's to change, so the agent reads its log
// (OpenLog) without following a symlink at any step below the upper layer,
// only if it is a regular file, and only its last MiB. Images live under
// StateDir/images/KEY, KEY the reference's key (names.Image.Key), never
// the name as given, their layers under StateDir/layers (layers.go);
// Prepare refuses invalid container and image
// names before it makes anything.
//
// Fast path (profile in docs/bench/profile.md): the agent freezes the
// cgroup itself, and a per-container CRIU configuration file skips cgroup
// properties and CRIU's iptables lock and declares runc's masked
// directories external; runc and CRIU run where the agent's tmpfs is /run,
// so CRIU keeps its kernel-feature cache (criucache_linux.go). Slow is the
// stock path, kept to measure the difference.
//
// Dumps inside the network namespace. CRIU dumps a task's network
// namespace when it is not CRIU's own, even when it is external: it mounts a
// sysfs for it and walks the conntrack table twice. That walk covers every
// bucket of the host's whole table (nf_conntrack_buckets, 262,144 here):
// ~12 ms even for an empty namespace, and the sysfs's release waits for an
// RCU grace period; with the rest, 25-30 ms of every frozen dump. A
// dump (stop-and-copy or lazy) therefore runs runc, and so CRIU, with the
// thread's network namespace set to the container's: the namespace is
// CRIU's own, which it skips (its TCP sockets are dumped as before). A
// lazy dump's page server then listens on that namespace's loopback; the
// agent picks its port and dials it from inside the namespace too. The
// image holds no network namespace, so it is marked (coat-in-netns) and
// its restore runs inside the destination's prepared namespace as well, on
// either host (rollback and recovery included); an image without the mark
// restores as before. Slow (runc's stock path) stays outside.
package runtime
