package supervisor

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/podmesh/podmesh/launcher/logs"
	"github.com/podmesh/podmesh/launcher/pod"
)

// Row is one line of `launcher ps`.
type Row struct {
	pod.Info
	CPUPercent float64 `json:"cpu_percent"`
	CPUTime    string  `json:"cpu_time"`
	Memory     uint64  `json:"memory"`
	// Exposes lists the ingress's host addresses and the service each reaches ("ADDR →
	// service"); empty on pod rows.
	Exposes []string `json:"exposes,omitempty"`
}

func (s *Supervisor) serveControl() (*http.Server, error) {
	path := filepath.Join(s.dir, "control.sock")
	_ = os.Remove(path)
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("supervisor: control socket: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /ps", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(s.rows())
	})
	mux.HandleFunc("POST /down", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusAccepted)
		if f, ok := w.(http.Flusher); ok {
			f.Flush()
		}
		s.stop()
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(l) }()
	return srv, nil
}

// rows snapshots every pod with its CPU rate since the last sample.
func (s *Supervisor) rows() []Row {
	s.mu.Lock()
	services := s.services
	in := s.ingress
	s.mu.Unlock()
	var out []Row
	if in != nil {
		out = append(out, in.row())
	}
	now := time.Now()
	for _, sv := range services {
		for _, p := range sv.pods {
			r := Row{Info: p.Info()}
			if st, err := p.Stats(); err == nil {
				r.Memory = st.Memory
				r.CPUTime = st.CPU.Round(time.Millisecond).String()
				s.mu.Lock()
				prev, ok := s.samples[p.Name()]
				s.mu.Unlock()
				if ok && now.Sub(prev.at) > 100*time.Millisecond && st.CPU >= prev.cpu {
					r.CPUPercent = 100 * float64(st.CPU-prev.cpu) / float64(now.Sub(prev.at))
				}
			}
			out = append(out, r)
		}
	}
	return out
}

// sample records each pod's CPU time every 2 seconds, the base of ps's CPU rate.
func (s *Supervisor) sample(ctx context.Context) {
	t := time.NewTicker(2 * time.Second)
	defer t.Stop()
	for {
		s.mu.Lock()
		services := s.services
		s.mu.Unlock()
		for _, sv := range services {
			for _, p := range sv.pods {
				if st, err := p.Stats(); err == nil {
					s.mu.Lock()
					s.samples[p.Name()] = cpuSample{cpu: st.CPU, at: time.Now()}
					s.mu.Unlock()
				}
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// controlClient talks HTTP to a project's launcher over its unix socket.
func controlClient(dir string) *http.Client {
	path := filepath.Join(dir, "control.sock")
	return &http.Client{
		Timeout: 10 * time.Second,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		}},
	}
}

func controlDo(ctx context.Context, dir, method, path string, out any) error {
	req, err := http.NewRequestWithContext(ctx, method, "http://launcher"+path, nil)
	if err != nil {
		return err
	}
	c := controlClient(dir)
	defer c.CloseIdleConnections()
	resp, err := c.Do(req)
	if err != nil {
		return fmt.Errorf("supervisor: ask the launcher (%s): %w", filepath.Join(dir, "control.sock"), err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return fmt.Errorf("supervisor: launcher %s %s: %s %s", method, path, resp.Status, bytes.TrimSpace(b))
	}
	if out != nil {
		return json.NewDecoder(resp.Body).Decode(out)
	}
	return nil
}

// ErrNotRunning is returned by PS when no launcher runs the project.
var ErrNotRunning = errors.New("supervisor: no launcher is running this project")

// PS asks the project's launcher for its pods.
func PS(ctx context.Context, cfg Config, project string) ([]Row, error) {
	cfg.withDefaults()
	if !Running(cfg, project) {
		return nil, ErrNotRunning
	}
	var rows []Row
	err := controlDo(ctx, projectDir(cfg, project), http.MethodGet, "/ps", &rows)
	return rows, err
}

// WritePS prints rows as the `launcher ps` table.
func WritePS(w io.Writer, rows []Row) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SERVICE\tREPLICA\tPOD IP\tPID\tSTATE\tRESTARTS\tHEALTH\tCPU\tMEMORY\tOOM KILLS\tLAST EXIT")
	for _, r := range rows {
		addr := "-"
		if r.Addr.IsValid() {
			addr = r.Addr.String()
		}
		pid := "-"
		if r.Pid > 0 {
			pid = fmt.Sprint(r.Pid)
		}
		health := r.Health
		if health == "" {
			health = "-"
		}
		last := r.LastExit
		if last == "" {
			last = "-"
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%d\t%s\t%.1f%%\t%s\t%d\t%s\n", r.Service, r.Replica, addr, pid, r.State, r.Restarts, health, r.CPUPercent, bytesString(r.Memory), r.OOMKills, last)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, r := range rows {
		for _, e := range r.Exposes {
			if _, err := fmt.Fprintf(w, "exposed on the host: %s (through %s)\n", e, r.Name); err != nil {
				return err
			}
		}
	}
	return nil
}

func bytesString(n uint64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1fGiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1fMiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1fKiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%dB", n)
}

// Logs writes the logs of target ("service" for all its replicas, or "service/replica")
// to w, each line prefixed with the pod's name; follow keeps going until ctx ends. process
// is "app", "sidecar" or "init".
func Logs(ctx context.Context, cfg Config, project, target, process string, follow bool, w io.Writer) error {
	cfg.withDefaults()
	if process == "" {
		process = "app"
	}
	svc, replica, _ := strings.Cut(target, "/")
	base := filepath.Join(cfg.LogDir, project)
	ents, err := os.ReadDir(base)
	if err != nil {
		return fmt.Errorf("supervisor: logs of %s: %w", project, err)
	}
	var pods []string
	for _, e := range ents {
		name := e.Name()
		i := strings.LastIndexByte(name, '-')
		if !e.IsDir() || i < 0 || name[:i] != svc || (replica != "" && name[i+1:] != replica) {
			continue
		}
		pods = append(pods, name)
	}
	if len(pods) == 0 {
		return fmt.Errorf("supervisor: no logs for %q in project %s (under %s)", target, project, base)
	}
	sort.Strings(pods)
	var mu sync.Mutex
	if !follow {
		for _, name := range pods {
			pw := &prefixWriter{w: w, mu: &mu, prefix: name + " | "}
			if err := logs.Copy(pw, filepath.Join(base, name, process+".log"), cfg.LogPolicy.MaxFiles); err != nil {
				return err
			}
			pw.flush()
		}
		return nil
	}
	var wg sync.WaitGroup
	errs := make([]error, len(pods))
	for i, name := range pods {
		wg.Add(1)
		go func() {
			defer wg.Done()
			pw := &prefixWriter{w: w, mu: &mu, prefix: name + " | "}
			errs[i] = logs.Follow(ctx, pw, filepath.Join(base, name, process+".log"), cfg.LogPolicy.MaxFiles, 0)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// prefixWriter writes whole lines to w, each with a prefix, under a shared lock.
type prefixWriter struct {
	w      io.Writer
	mu     *sync.Mutex
	prefix string
	buf    []byte
}

func (p *prefixWriter) Write(b []byte) (int, error) {
	p.buf = append(p.buf, b...)
	for {
		i := bytes.IndexByte(p.buf, '\n')
		if i < 0 {
			return len(b), nil
		}
		p.mu.Lock()
		_, err := fmt.Fprintf(p.w, "%s%s\n", p.prefix, p.buf[:i])
		p.mu.Unlock()
		p.buf = p.buf[i+1:]
		if err != nil {
			return len(b), err
		}
	}
}

func (p *prefixWriter) flush() {
	if len(p.buf) > 0 {
		_, _ = p.Write([]byte("\n"))
	}
}
