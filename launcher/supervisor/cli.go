package supervisor

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/podmesh/podmesh/launcher/compose"
	"github.com/podmesh/podmesh/launcher/initproc"
	"github.com/podmesh/podmesh/launcher/logs"
	"golang.org/x/sys/unix"
)

const usage = `usage: launcher [flags] up [-d] [-f FILE] [-metrics ADDR] [-trace-endpoint URL]
       launcher [flags] ps [-f FILE | -p PROJECT]
       launcher [flags] logs [-follow] [-c app|sidecar|init] [-f FILE | -p PROJECT] SERVICE[/REPLICA]
       launcher [flags] down [-f FILE | -p PROJECT]
flags:
`

// daemonEnv carries the readiness pipe's fd to a launcher started by `up -d`.
const daemonEnv = "PODMESH_LAUNCHER_READY_FD"

// CLI runs the launcher command line (os.Args[1:]); cmd/launcher is a thin wrapper.
func CLI(ctx context.Context, args []string, stdout io.Writer) error {
	// What the launcher inherited without close-on-exec (a shell's descriptors) must not
	// reach the registry, the ingress or the pods; fd 3 of a background launcher, its
	// readiness pipe, is read through os.NewFile, which does not care.
	if err := initproc.CloseOnExecFrom(3); err != nil {
		return fmt.Errorf("mark inherited descriptors close-on-exec: %w", err)
	}
	fs := flag.NewFlagSet("launcher", flag.ContinueOnError)
	fs.Usage = func() { fmt.Fprint(fs.Output(), usage); fs.PrintDefaults() }
	self, _ := os.Executable()
	dir := filepath.Dir(self)
	var cfg Config
	fs.StringVar(&cfg.StateDir, "state-dir", DefaultStateDir, "runtime state (lock, control socket, pod files)")
	fs.StringVar(&cfg.LogDir, "log-dir", DefaultLogDir, "process logs, one directory per project and pod")
	fs.StringVar(&cfg.SidecarBin, "sidecar-bin", filepath.Join(dir, "sidecar"), "the sidecar program")
	fs.StringVar(&cfg.RegistryBin, "registry-bin", filepath.Join(dir, "registry"), "the registry program, started unless -registry is given")
	initBin := filepath.Join(dir, "podmesh-init")
	if _, err := os.Stat(initBin); err != nil {
		initBin = "" // the launcher binary itself plays init
	}
	fs.StringVar(&cfg.Exe, "init-bin", initBin, "binary run as each pod's init and exec shim (podmesh-init, which starts much faster than the launcher; empty: the launcher itself)")
	registryArgs := fs.String("registry-args", "-http {addr} -data {data}", "arguments of the registry program (those of cmd/registry by default; a Consul agent needs others); {addr} is its host:port, {port} the port alone, {data} its data directory")
	fs.StringVar(&cfg.RegistryURL, "registry", "", "use the registry (or Consul agent) at this URL instead of starting one")
	fs.IntVar(&cfg.RelayPort, "relay-port", DefaultRelayPort, "port on the bridge's gateway address where pods reach the registry")
	fs.Int64Var(&cfg.LogPolicy.MaxSize, "log-max-size", 0, "bytes per log file before rotation (default 10 MiB)")
	fs.IntVar(&cfg.LogPolicy.MaxFiles, "log-max-files", 0, "log files kept per process (default 5)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return errors.New("missing command")
	}
	cfg.RegistryArgs = func(addr, data string) []string {
		_, port, _ := strings.Cut(addr, ":")
		r := strings.NewReplacer("{addr}", addr, "{port}", port, "{data}", data)
		return strings.Fields(r.Replace(*registryArgs))
	}
	logger := log.New(os.Stderr, "launcher: ", log.LstdFlags)
	cfg.Logf = logger.Printf
	cfg.Cgroups = HostCgroups{}
	cmd, rest := fs.Arg(0), fs.Args()[1:]
	sub := flag.NewFlagSet(cmd, flag.ContinueOnError)
	file := sub.String("f", "", "compose file (default compose.yaml, compose.yml, docker-compose.yaml or docker-compose.yml)")
	switch cmd {
	case "up":
		detach := sub.Bool("d", false, "run in the background")
		sub.StringVar(&cfg.MetricsAddr, "metrics", DefaultMetricsAddr, "serve the launcher's metrics (docs/metrics.md) at this host:port, host \""+GatewayHost+"\" being the bridge's gateway address, and register it in the registry as "+LauncherService+"; empty: no metrics")
		sub.StringVar(&cfg.TraceEndpoint, "trace-endpoint", "", "trace collector (OTLP/HTTP, host:port or http://host:port) the sidecars send spans to, through a relay on the bridge's gateway; default the compose file's x-podmesh.trace_endpoint, else none")
		sub.IntVar(&cfg.TracePort, "trace-port", DefaultTracePort, "port of the trace relay on the bridge's gateway address")
		if err := sub.Parse(rest); err != nil {
			return err
		}
		path, err := composePath(*file)
		if err != nil {
			return err
		}
		project, err := compose.Load(ctx, path)
		if err != nil {
			return err // an invalid file starts nothing
		}
		if *detach {
			return detachUp(ctx, cfg, project, args, stdout)
		}
		return upCmd(ctx, cfg, project, stdout)
	case "ps":
		name := sub.String("p", "", "project name")
		if err := sub.Parse(rest); err != nil {
			return err
		}
		project, err := projectName(ctx, cfg, *file, *name)
		if err != nil {
			return err
		}
		rows, err := PS(ctx, cfg, project)
		if err != nil {
			return err
		}
		return WritePS(stdout, rows)
	case "logs":
		name := sub.String("p", "", "project name")
		follow := sub.Bool("follow", false, "keep printing new lines")
		sub.BoolVar(follow, "F", false, "same as -follow")
		process := sub.String("c", "app", "whose logs: app, sidecar or init")
		if err := sub.Parse(reorder(rest)); err != nil {
			return err
		}
		if sub.NArg() != 1 {
			return errors.New("logs: want one SERVICE or SERVICE/REPLICA")
		}
		project, err := projectName(ctx, cfg, *file, *name)
		if err != nil {
			return err
		}
		return Logs(ctx, cfg, project, sub.Arg(0), *process, *follow, stdout)
	case "down":
		name := sub.String("p", "", "project name")
		timeout := sub.Duration("timeout", 5*time.Minute, "give up waiting for the launcher to stop after this long (it goes on stopping)")
		if err := sub.Parse(rest); err != nil {
			return err
		}
		project, err := projectName(ctx, cfg, *file, *name)
		if err != nil {
			return err
		}
		// SIGINT or SIGTERM (ctx) ends the wait too.
		dctx, cancel := context.WithTimeout(ctx, *timeout)
		defer cancel()
		return Down(dctx, cfg, project)
	default:
		fs.Usage()
		return fmt.Errorf("unknown command %q", cmd)
	}
}

// reorder moves flags before positional arguments, so `logs web -follow` works too.
func reorder(args []string) []string {
	var flags, pos []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		if strings.HasPrefix(a, "-") {
			flags = append(flags, a)
			if (a == "-c" || a == "-p" || a == "-f") && i+1 < len(args) {
				flags = append(flags, args[i+1])
				i++
			}
			continue
		}
		pos = append(pos, a)
	}
	return append(flags, pos...)
}

func upCmd(ctx context.Context, cfg Config, project *compose.Project, stdout io.Writer) error {
	var ready func(error)
	if fd := os.Getenv(daemonEnv); fd != "" {
		// In the background the launcher's own log is launcher.log, rotated like the pods'
		// logs (-log-max-size, -log-max-files); its stdout and stderr follow the current file.
		lf, err := logs.Open(filepath.Join(cfg.StateDir, project.Name, "launcher.log"), cfg.LogPolicy)
		if err != nil {
			return err
		}
		defer lf.Close()
		lf.SetOnOpen(func(f *os.File) {
			_ = unix.Dup3(int(f.Fd()), 1, 0)
			_ = unix.Dup3(int(f.Fd()), 2, 0)
		})
		cfg.Logf = log.New(lf, "launcher: ", log.LstdFlags).Printf
		// Children (the registry) must not inherit the pipe, or `up -d` waits for them.
		syscall.CloseOnExec(3)
		pipe := os.NewFile(3, "ready")
		ready = func(err error) {
			if err != nil {
				fmt.Fprintf(pipe, "error: %v\n", err)
			} else {
				fmt.Fprintln(pipe, "ok")
			}
			pipe.Close()
		}
	} else {
		ready = func(err error) {
			if err == nil {
				fmt.Fprintf(stdout, "project %s started; Ctrl-C stops it\n", project.Name)
			}
		}
	}
	return Up(ctx, cfg, project, ready)
}

// detachUp starts `launcher up` again in the background (a new session, output to
// <state-dir>/<project>/launcher.log, which the background launcher rotates) and returns
// once it reports that everything started.
func detachUp(ctx context.Context, cfg Config, project *compose.Project, args []string, stdout io.Writer) error {
	var child []string
	for _, a := range args {
		if a != "-d" && a != "--d" && a != "-d=true" {
			child = append(child, a)
		}
	}
	dir := filepath.Join(cfg.StateDir, project.Name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	logPath := filepath.Join(dir, "launcher.log")
	logf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
	if err != nil {
		return err
	}
	defer logf.Close()
	r, w, err := os.Pipe()
	if err != nil {
		return err
	}
	defer r.Close()
	cmd := exec.Command("/proc/self/exe")
	cmd.Args = append([]string{os.Args[0]}, child...) // the same name, for ps and for tests
	cmd.Env = append(os.Environ(), daemonEnv+"=3")
	cmd.ExtraFiles = []*os.File{w}
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		w.Close()
		return fmt.Errorf("start background launcher: %w", err)
	}
	w.Close()
	pid := cmd.Process.Pid
	if err := os.WriteFile(filepath.Join(dir, "launcher.pid"), fmt.Appendf(nil, "%d\n", pid), 0o644); err != nil {
		return err
	}
	_ = cmd.Process.Release()
	b, _ := io.ReadAll(r)
	msg := strings.TrimSpace(string(b))
	switch {
	case msg == "ok":
		fmt.Fprintf(stdout, "project %s started in the background (pid %d, log %s)\n", project.Name, pid, logPath)
		return nil
	case msg == "":
		return fmt.Errorf("background launcher exited before starting; see %s", logPath)
	default:
		return errors.New(strings.TrimPrefix(msg, "error: "))
	}
}

func composePath(file string) (string, error) {
	if file != "" {
		return file, nil
	}
	for _, f := range []string{"compose.yaml", "compose.yml", "docker-compose.yaml", "docker-compose.yml"} {
		if _, err := os.Stat(f); err == nil {
			return f, nil
		}
	}
	return "", errors.New("no compose file: give -f FILE")
}

// projectName finds the project a command is about: -p, the compose file's, or the only
// project with state.
func projectName(ctx context.Context, cfg Config, file, name string) (string, error) {
	if name != "" {
		return name, nil
	}
	if path, err := composePath(file); err == nil {
		p, err := compose.Load(ctx, path)
		if err != nil {
			return "", err
		}
		return p.Name, nil
	}
	projects, err := Projects(cfg.StateDir)
	if err != nil {
		return "", err
	}
	if len(projects) == 1 {
		return projects[0], nil
	}
	return "", fmt.Errorf("name the project with -p or -f (projects with state: %v)", projects)
}
