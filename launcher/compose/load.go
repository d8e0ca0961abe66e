// Package compose reads the launcher's manifest: a Compose file restricted to the keys that make
// sense for services that are host binaries, plus x-podmesh blocks for the mesh.
//
// Loading runs in four steps, each of which stops the load when it finds a problem:
//
//  1. The YAML node tree is walked against the keys podmesh supports (keys.go). Every other key
//     is an error naming the file, line and key; nothing is silently ignored. The walk also
//     records the line of every key, so later errors point at a line too.
//  2. compose-go loads the model: interpolation (${VAR:-default} from the environment and the
//     .env file beside the compose file), schema validation, path resolution.
//  3. Values compose-go would fail to decode with an unhelpful message (durations, sizes,
//     cpus) are checked on the interpolated model.
//  4. The model is converted into Services and validated by a list of named checks
//     (validate.go), which collect every error rather than stopping at the first.
//
// An invalid file returns no project.
package compose

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"github.com/compose-spec/compose-go/v2/dotenv"
	"github.com/compose-spec/compose-go/v2/loader"
	"github.com/compose-spec/compose-go/v2/types"
)

// MaxFileSize bounds the compose file read by Load.
const MaxFileSize = 4 << 20

// Load reads a Compose file (and its env_files, relative to the file's dir), validates it, and
// returns the project in dependency order (a service comes after everything it depends_on).
// An invalid file returns an error naming the file, line and key (unsupported keys) or the
// service and field (every other error); it never returns a partial project.
func Load(ctx context.Context, path string) (*Project, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("compose: load %s: %w", path, err)
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("compose: load %s: %w", path, err)
	}
	content, err := readFile(abs)
	if err != nil {
		return nil, fmt.Errorf("compose: load %s: %w", path, err)
	}
	env, err := projectEnv(filepath.Dir(abs))
	if err != nil {
		return nil, &FieldError{File: path, Msg: err.Error()}
	}
	return load(ctx, path, abs, content, env)
}

func readFile(abs string) ([]byte, error) {
	f, err := os.Open(abs)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("not a regular file")
	}
	if fi.Size() > MaxFileSize {
		return nil, fmt.Errorf("file is %d bytes, more than the %d allowed", fi.Size(), MaxFileSize)
	}
	return os.ReadFile(abs)
}

// projectEnv is the environment used for interpolation: the process environment over the
// .env file in the project directory, as `docker compose` does.
func projectEnv(dir string) (map[string]string, error) {
	env := map[string]string{}
	dotEnv := filepath.Join(dir, ".env")
	if fi, err := os.Stat(dotEnv); err == nil && fi.Mode().IsRegular() {
		vars, err := dotenv.GetEnvFromFile(envMap(), []string{dotEnv})
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", dotEnv, err)
		}
		for k, v := range vars {
			env[k] = v
		}
	}
	for k, v := range envMap() {
		env[k] = v
	}
	return env, nil
}

func envMap() map[string]string {
	m := map[string]string{}
	for _, kv := range os.Environ() {
		if k, v, ok := strings.Cut(kv, "="); ok {
			m[k] = v
		}
	}
	return m
}

// load does the work of Load on content already read; file is the name errors use.
func load(ctx context.Context, file, abs string, content []byte, env map[string]string) (*Project, error) {
	dir := filepath.Dir(abs)
	w, err := checkKeys(file, content)
	if err != nil {
		return nil, err
	}
	if len(w.errs) > 0 {
		return nil, joinFieldErrors(w.errs)
	}
	if len(w.order) == 0 {
		return nil, &FieldError{File: file, Line: w.lineOf("services"), Path: "services", Msg: "no services defined"}
	}

	details := types.ConfigDetails{
		WorkingDir:  dir,
		ConfigFiles: []types.ConfigFile{{Filename: abs, Content: content}},
		Environment: env,
	}
	dirName := loader.NormalizeProjectName(filepath.Base(dir))
	if dirName == "" {
		dirName = "podmesh"
	}
	fns := []func(*loader.Options){func(o *loader.Options) {
		o.SkipConsistencyCheck = true   // it insists on image or build
		o.SkipResolveEnvironment = true // done per service in convert, to name the service in errors
		o.SkipResolveLabels = true
		o.SkipInclude = true
		o.SkipExtends = true
		o.SetProjectName(dirName, false)
	}}
	dict, err := loader.LoadModelWithContext(ctx, details, fns...)
	if err != nil {
		return nil, composeGoError(file, abs, w, err)
	}
	if errs := precheck(file, w, dict); len(errs) > 0 {
		return nil, joinFieldErrors(errs)
	}
	name, _ := dict["name"].(string)
	if name == "" {
		name = dirName
	}
	opts := loader.ToOptions(&details, fns)
	opts.SetProjectName(name, true)
	cp, err := loader.ModelToProject(dict, opts, details)
	if err != nil {
		return nil, composeGoError(file, abs, w, err)
	}

	c := &converter{file: file, dir: dir, w: w, env: types.Mapping(env), dict: dict}
	p := c.project(name, abs, cp)
	if errs := validate(c, p); len(errs) > 0 {
		return nil, joinFieldErrors(errs)
	}
	return p, nil
}

func joinFieldErrors(errs []*FieldError) error {
	if len(errs) == 1 {
		return errs[0]
	}
	list := make([]error, len(errs))
	for i, e := range errs {
		list[i] = e
	}
	return errors.Join(list...)
}

var numericPart = regexp.MustCompile(`\.(\d+)(\.|$)`)

// dottedToPath turns compose-go's "services.web.command.0" into "services.web.command[0]".
func dottedToPath(p string) string {
	for {
		q := numericPart.ReplaceAllString(p, "[$1]$2")
		if q == p {
			return p
		}
		p = q
	}
}

// composeGoError turns an error from compose-go into a FieldError naming the file and, when
// the error names a key path, the path and its line.
func composeGoError(file, abs string, w *walker, err error) error {
	msg := err.Error()
	msg = strings.TrimPrefix(msg, "validating "+abs+": ")
	msg = strings.ReplaceAll(msg, abs, file)
	for _, prefix := range []string{"error while interpolating ", ""} {
		rest, ok := strings.CutPrefix(msg, prefix)
		if !ok {
			continue
		}
		sep := ": "
		if prefix == "" {
			sep = " "
		}
		p, m, ok := strings.Cut(rest, sep)
		if !ok || !strings.HasPrefix(p, "services.") && !strings.HasPrefix(p, "x-podmesh") && p != "name" {
			continue
		}
		p = dottedToPath(p)
		if prefix != "" {
			m = "interpolation: " + m
		}
		return &FieldError{File: file, Line: w.lineOf(p), Path: p, Msg: m}
	}
	return &FieldError{File: file, Msg: msg}
}

// precheck validates, on the interpolated model, the values compose-go would otherwise fail to
// decode with an error that names neither the file nor the line.
func precheck(file string, w *walker, dict map[string]any) []*FieldError {
	var errs []*FieldError
	fail := func(path, format string, args ...any) {
		errs = append(errs, &FieldError{File: file, Line: w.lineOf(path), Path: path, Msg: fmt.Sprintf(format, args...)})
	}
	services, _ := dict["services"].(map[string]any)
	for _, name := range w.order {
		svc, _ := services[name].(map[string]any)
		if svc == nil {
			continue
		}
		base := "services." + name
		duration := func(path string, v any) {
			if v == nil {
				return
			}
			var d types.Duration
			if err := d.DecodeMapstructure(v); err != nil {
				fail(path, "invalid duration %q (want e.g. 10s, 1m30s)", fmt.Sprint(v))
			}
		}
		duration(base+".stop_grace_period", svc["stop_grace_period"])
		if hc, ok := svc["healthcheck"].(map[string]any); ok {
			for _, k := range []string{"interval", "timeout", "start_period"} {
				duration(base+".healthcheck."+k, hc[k])
			}
		}
		deploy, _ := svc["deploy"].(map[string]any)
		if rp, ok := deploy["restart_policy"].(map[string]any); ok {
			for _, k := range []string{"delay", "window"} {
				duration(base+".deploy.restart_policy."+k, rp[k])
			}
		}
		res, _ := deploy["resources"].(map[string]any)
		limits, _ := res["limits"].(map[string]any)
		lp := base + ".deploy.resources.limits."
		if v, ok := limits["memory"]; ok {
			var b types.UnitBytes
			if err := b.DecodeMapstructure(v); err != nil {
				fail(lp+"memory", "invalid size %q (want bytes or a unit: 64m, 1g)", fmt.Sprint(v))
			}
		}
		if v, ok := limits["cpus"]; ok {
			if _, err := parseCPUs(v); err != nil {
				fail(lp+"cpus", "invalid number of CPUs %q (want e.g. 0.5)", fmt.Sprint(v))
			}
		}
	}
	return errs
}

func parseCPUs(v any) (float64, error) {
	switch v := v.(type) {
	case int:
		return float64(v), nil
	case int64:
		return float64(v), nil
	case uint64:
		return float64(v), nil
	case float32:
		return strconv.ParseFloat(strconv.FormatFloat(float64(v), 'g', -1, 32), 64)
	case float64:
		return v, nil
	case string:
		return strconv.ParseFloat(strings.TrimSpace(v), 64)
	}
	return 0, fmt.Errorf("unexpected type %T", v)
}
