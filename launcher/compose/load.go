// Package compose reads the launcher's manifest: a Compose file restricted to the keys that make
// sense for host binaries, plus x-podmesh blocks.
package compose

import (
	"context"
	"errors"
	"fmt"
)

// Load reads a Compose file (and its env_files, relative to the file's dir), validates it, and
// returns the project in dependency order (a service comes after everything it depends_on).
// An invalid file returns an error naming the file, line and key (unsupported keys) or the
// service and field (every other error); it never returns a partial project.
func Load(ctx context.Context, path string) (*Project, error) {
	return nil, fmt.Errorf("compose: load %s: %w", path, errors.ErrUnsupported)
}
