package supervisor

import (
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/expfmt"

	"github.com/podmesh/podmesh/launcher/pod"
)

type fakePod struct {
	mu    sync.Mutex
	info  pod.Info
	usage *pod.Usage // nil: no cgroup
}

func (f *fakePod) Info() pod.Info {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.info
}

func (f *fakePod) Usage() (pod.Usage, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.usage == nil {
		return pod.Usage{}, pod.ErrNoUsage
	}
	return *f.usage, nil
}

// TestCollector: every series of docs/metrics.md's launcher table, with the values the pods
// and their cgroups report; a pod waiting for its cgroup has no resource series; a removed
// pod has none at all, and the running-pods gauge counts only running pods.
func TestCollector(t *testing.T) {
	web1 := &fakePod{info: pod.Info{Service: "web", Replica: 1, Status: pod.Running, Health: pod.HealthHealthy, Restarts: 2},
		usage: &pod.Usage{Stats: pod.Stats{CPU: 1500 * time.Millisecond, Memory: 4096, OOMKills: 1}, MemoryLimit: 1 << 20, CPULimit: 0.5,
			Members: map[string]pod.Stats{"app": {CPU: time.Second, Memory: 1024}, "sidecar": {CPU: 250 * time.Millisecond, Memory: 2048}}}}
	web2 := &fakePod{info: pod.Info{Service: "web", Replica: 2, Status: pod.Running, Health: pod.HealthUnhealthy},
		usage: &pod.Usage{Stats: pod.Stats{Memory: 10}}}
	db1 := &fakePod{info: pod.Info{Service: "db", Replica: 1, Status: pod.Created}}
	job1 := &fakePod{info: pod.Info{Service: "job", Replica: 1, Status: pod.BackOff, OOMKills: 3},
		usage: &pod.Usage{Stats: pod.Stats{OOMKills: 2}}}
	gone := &fakePod{info: pod.Info{Service: "job", Replica: 2, Status: pod.Removed, Addr: netip.MustParseAddr("10.0.0.9")},
		usage: &pod.Usage{Stats: pod.Stats{Memory: 99}}}
	services := []metricService{
		{name: "web", pods: []metricPod{web1, web2}},
		{name: "db", pods: []metricPod{db1}},
		{name: "job", pods: []metricPod{job1, gone}},
	}
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(collector{services: func() []metricService { return services }})

	states := func(svc, rep, cur string) string {
		var b strings.Builder
		for _, st := range slices.Sorted(slices.Values(PodStates)) { // as Gather sorts them
			v := "0"
			if st == cur {
				v = "1"
			}
			b.WriteString(`podmesh_launcher_pod_state{replica="` + rep + `",service="` + svc + `",state="` + st + `"} ` + v + "\n")
		}
		return b.String()
	}
	want := `
# HELP podmesh_launcher_cpu_limit_cores The pod's CPU limit as its cgroup says, in cores (0: unlimited).
# TYPE podmesh_launcher_cpu_limit_cores gauge
podmesh_launcher_cpu_limit_cores{replica="1",service="job"} 0
podmesh_launcher_cpu_limit_cores{replica="1",service="web"} 0.5
podmesh_launcher_cpu_limit_cores{replica="2",service="web"} 0
# HELP podmesh_launcher_cpu_seconds_total CPU time used by the pod (member pod) or by its app or sidecar, from the cgroup files.
# TYPE podmesh_launcher_cpu_seconds_total counter
podmesh_launcher_cpu_seconds_total{member="app",replica="1",service="web"} 1
podmesh_launcher_cpu_seconds_total{member="pod",replica="1",service="job"} 0
podmesh_launcher_cpu_seconds_total{member="pod",replica="1",service="web"} 1.5
podmesh_launcher_cpu_seconds_total{member="pod",replica="2",service="web"} 0
podmesh_launcher_cpu_seconds_total{member="sidecar",replica="1",service="web"} 0.25
# HELP podmesh_launcher_memory_bytes Memory charged to the pod (member pod) or to its app or sidecar, from the cgroup files.
# TYPE podmesh_launcher_memory_bytes gauge
podmesh_launcher_memory_bytes{member="app",replica="1",service="web"} 1024
podmesh_launcher_memory_bytes{member="pod",replica="1",service="job"} 0
podmesh_launcher_memory_bytes{member="pod",replica="1",service="web"} 4096
podmesh_launcher_memory_bytes{member="pod",replica="2",service="web"} 10
podmesh_launcher_memory_bytes{member="sidecar",replica="1",service="web"} 2048
# HELP podmesh_launcher_memory_limit_bytes The pod's memory limit as its cgroup says (0: unlimited).
# TYPE podmesh_launcher_memory_limit_bytes gauge
podmesh_launcher_memory_limit_bytes{replica="1",service="job"} 0
podmesh_launcher_memory_limit_bytes{replica="1",service="web"} 1.048576e+06
podmesh_launcher_memory_limit_bytes{replica="2",service="web"} 0
# HELP podmesh_launcher_oom_kills_total Processes of the pod the kernel's OOM killer killed (the cgroup's count).
# TYPE podmesh_launcher_oom_kills_total counter
podmesh_launcher_oom_kills_total{replica="1",service="db"} 0
podmesh_launcher_oom_kills_total{replica="1",service="job"} 3
podmesh_launcher_oom_kills_total{replica="1",service="web"} 1
podmesh_launcher_oom_kills_total{replica="2",service="web"} 0
# HELP podmesh_launcher_pod_state 1 for the pod's current state, 0 for the others.
# TYPE podmesh_launcher_pod_state gauge
` + states("db", "1", "starting") + states("job", "1", "restarting") + states("web", "1", "running") + states("web", "2", "unhealthy") + `# HELP podmesh_launcher_pods Running pods of the service.
# TYPE podmesh_launcher_pods gauge
podmesh_launcher_pods{service="db"} 0
podmesh_launcher_pods{service="job"} 0
podmesh_launcher_pods{service="web"} 2
# HELP podmesh_launcher_restarts_total Times the launcher restarted the pod.
# TYPE podmesh_launcher_restarts_total counter
podmesh_launcher_restarts_total{replica="1",service="db"} 0
podmesh_launcher_restarts_total{replica="1",service="job"} 0
podmesh_launcher_restarts_total{replica="1",service="web"} 2
podmesh_launcher_restarts_total{replica="2",service="web"} 0
`
	if got := gatherText(t, reg); got != strings.TrimLeft(want, "\n") {
		t.Fatalf("metrics:\n%s\nwant:\n%s", got, want)
	}

	// The removed pod came back (never in practice; here, to see the filter is the status).
	gone.mu.Lock()
	gone.info.Status = pod.Stopping
	gone.mu.Unlock()
	if n := strings.Count(gatherText(t, reg), "podmesh_launcher_memory_bytes{"); n != 6 {
		t.Errorf("%d memory series with job-2 stopping; want 6", n)
	}
}

// gatherText is what reg serves, in the text format.
func gatherText(t *testing.T, reg *prometheus.Registry) string {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, mf := range mfs {
		if _, err := expfmt.MetricFamilyToText(&b, mf); err != nil {
			t.Fatal(err)
		}
	}
	return b.String()
}

func TestStateLabel(t *testing.T) {
	for _, c := range []struct {
		st     pod.Status
		health string
		want   string
	}{
		{pod.Created, "", "starting"}, {pod.Starting, "", "starting"},
		{pod.Running, pod.HealthStarting, "running"}, {pod.Running, pod.HealthHealthy, "running"},
		{pod.Running, pod.HealthUnhealthy, "unhealthy"}, {pod.BackOff, "", "restarting"},
		{pod.Exited, "", "exited"}, {pod.Stopping, "", "stopping"}, {pod.Stopped, "", "stopping"},
	} {
		if got := stateLabel(pod.Info{Status: c.st, Health: c.health}); got != c.want {
			t.Errorf("%s/%q: %q, want %q", c.st, c.health, got, c.want)
		}
	}
}

func TestResolveMetricsAddr(t *testing.T) {
	gw := netip.MustParseAddr("10.89.0.1")
	for in, want := range map[string]string{
		"gateway:15091":   "10.89.0.1:15091",
		"127.0.0.1:0":     "127.0.0.1:0",
		":9000":           ":9000",
		"[::1]:9000":      "[::1]:9000",
		"nonsense":        "",
		"gateway":         "",
		"gateway:15091:1": "",
	} {
		got, err := resolveMetricsAddr(in, gw)
		if (err != nil) != (want == "") || got != want {
			t.Errorf("resolveMetricsAddr(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
}
