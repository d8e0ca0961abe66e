package supervisor

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/podmesh/podmesh/launcher/netns"
)

// State is what a launcher has created on the host, written to <StateDir>/<project>/state.json
// before each object is created, so the next `up` or `down` after a killed launcher finds and
// removes it all.
type State struct {
	Project string            `json:"project"`
	Pid     int               `json:"pid"` // the launcher's
	Started time.Time         `json:"started"`
	Network netns.Network     `json:"network"`
	Bridge  netns.BridgeState `json:"bridge"`
	Cgroup  string            `json:"cgroup"` // directory under the launcher's cgroup holding the pods
	// CgroupDirs are that directory's absolute paths, one per cgroup hierarchy.
	CgroupDirs []string `json:"cgroup_dirs,omitempty"`
	// Registry is the registry process the launcher started, if any.
	Registry *RegistryProc `json:"registry,omitempty"`
	// RegistryURL is where the pods were registered, and Instances their IDs, so cleanup
	// after a crash deregisters them from a registry that outlives the launcher.
	RegistryURL string   `json:"registry_url,omitempty"`
	Instances   []string `json:"instances,omitempty"`
	// Intentions are the allow intentions the launcher created in that registry for the
	// project's declared edges, each recorded before it was created.
	Intentions []Edge      `json:"intentions,omitempty"`
	Pods       []netns.Pod `json:"pods"`
	// Ingress is the ingress sidecar's current process, if the project exposes a service.
	// It also sits in the project's cgroups; the pid is a second way to find it.
	Ingress *Proc `json:"ingress,omitempty"`
}

// Proc identifies a process the launcher started outside a pod.
type Proc struct {
	Pid   int    `json:"pid"`
	Start uint64 `json:"start,omitempty"` // clock ticks after boot (/proc/PID/stat), against pid reuse
	Exe   string `json:"exe"`             // symlinks resolved, as /proc/PID/exe shows it
}

// RegistryProc identifies a registry the launcher started.
type RegistryProc struct {
	Pid     int    `json:"pid"` // 0: recorded before it started
	Start   uint64 `json:"start,omitempty"`
	Exe     string `json:"exe"`
	DataDir string `json:"data_dir"`
	Addr    string `json:"addr"`
}

// stateFile persists a State atomically (write, fsync, rename).
type stateFile struct {
	path string
	mu   sync.Mutex
	st   State
}

func (f *stateFile) update(fn func(*State)) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(&f.st)
	return writeState(f.path, f.st)
}

func (f *stateFile) get() State {
	f.mu.Lock()
	defer f.mu.Unlock()
	st := f.st
	st.Pods = append([]netns.Pod(nil), f.st.Pods...)
	st.Intentions = append([]Edge(nil), f.st.Intentions...)
	return st
}

func writeState(path string, st State) error {
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return fmt.Errorf("supervisor: encode state: %w", err)
	}
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("supervisor: write state %s: %w", tmp, err)
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return fmt.Errorf("supervisor: write state %s: %w", tmp, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("supervisor: sync state %s: %w", tmp, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("supervisor: close state %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("supervisor: install state %s: %w", path, err)
	}
	return nil
}

// readState loads a project's state; os.ErrNotExist when there is none.
func readState(path string) (State, error) {
	var st State
	b, err := os.ReadFile(path)
	if err != nil {
		return st, err
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return st, fmt.Errorf("supervisor: decode state %s: %w", path, err)
	}
	return st, nil
}

// Projects lists the projects with state under dir.
func Projects(dir string) ([]string, error) {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("supervisor: list %s: %w", dir, err)
	}
	var out []string
	for _, e := range ents {
		if _, err := os.Stat(filepath.Join(dir, e.Name(), "state.json")); err == nil {
			out = append(out, e.Name())
		}
	}
	return out, nil
}
