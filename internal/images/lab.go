package images

// RedisBinary is the program the redis image holds: Debian 12's
// redis-server (scripts/install-deps.sh installs it).
const RedisBinary = "redis-server"

// BuildRedis builds in dir the lab's redis image: Debian's redis-server
// as /usr/bin/redis-server with its libraries (jemalloc, OpenSSL, ...), as
// BuildFromHost does for sockperf and iperf3. Run it without persistence
// and on all addresses, e.g.
//
//	/usr/bin/redis-server --port 6379 --save '' --appendonly no --protected-mode no
func BuildRedis(dir string) error {
	return BuildFromHost(dir, []string{RedisBinary})
}

// LabImage is one image the lab ships.
type LabImage struct {
	Name  string
	Build func(dir string) error
	// Cmd is the image's default command (its configuration's Cmd), so
	// that `coat run --host H --name N IMAGE` starts its server as
	// `podman run` would.
	Cmd []string
}

// LabImages lists the lab's images in build order: sample (the static
// coat-sample binary at sampleBin), sockperf, iperf3 and redis (Debian's
// programs with their libraries).
func LabImages(sampleBin string) []LabImage {
	return []LabImage{
		{"sample", func(d string) error { return BuildStatic(d, sampleBin, "coat-sample") }, []string{"/bin/coat-sample", "server"}},
		{"sockperf", func(d string) error { return BuildFromHost(d, []string{"sockperf"}) },
			[]string{"sockperf", "server", "--tcp", "-i", "0.0.0.0", "-p", "11111"}},
		{"iperf3", func(d string) error { return BuildFromHost(d, []string{"iperf3"}) }, []string{"iperf3", "-s"}},
		{"redis", BuildRedis, []string{"/usr/bin/redis-server", "--port", "6379", "--save", "", "--appendonly", "no", "--protected-mode", "no"}},
	}
}

// LabCmd is the default command of the lab image name (nil if none).
func LabCmd(name string) []string {
	for _, im := range LabImages("") {
		if im.Name == name {
			return im.Cmd
		}
	}
	return nil
}
