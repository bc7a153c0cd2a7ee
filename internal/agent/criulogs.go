package agent

import (
	"os"
	"path/filepath"
	"sort"
)

// criuLogsKept is how many of CRIU's log directories (one per checkpoint,
// restore or recovery, under StateDir/criu-logs) a host keeps: the newest,
// for a failure to be looked into. Each migration adds one or two, from
// kilobytes to megabytes (a thousand TCP connections log 2-3 MB); kept
// forever they would fill the state directory's disk.
const criuLogsKept = 100

// pruneCriuLogs removes all but the newest criuLogsKept log directories.
// A directory still written to (a post-copy's source serves pages for as
// long as the copy takes) is among the newest unless that many others
// came since; CRIU then writes on into the removed file.
func pruneCriuLogs(dir string, keep int) {
	ents, err := os.ReadDir(dir)
	if err != nil || len(ents) <= keep {
		return
	}
	type logDir struct {
		path string
		mod  int64
	}
	var ds []logDir
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		fi, err := e.Info()
		if err != nil {
			continue
		}
		ds = append(ds, logDir{filepath.Join(dir, e.Name()), fi.ModTime().UnixNano()})
	}
	if len(ds) <= keep {
		return
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i].mod > ds[j].mod })
	for _, d := range ds[keep:] {
		_ = os.RemoveAll(d.path)
	}
}
