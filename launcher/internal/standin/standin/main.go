// Command standin is the stand-in sidecar and app (see package standin) as a small binary of
// their own, for measurements where the test binary's start-up cost would distort the result.
// Link it as standin-sidecar or standin-app.
package main

import (
	"context"
	"fmt"
	"os"

	"github.com/podmesh/podmesh/launcher/internal/standin"
)

func main() {
	if ok, code := standin.Main(context.Background()); ok {
		os.Exit(code)
	}
	fmt.Fprintf(os.Stderr, "standin: run as %s or %s\n", standin.SidecarName, standin.AppName)
	os.Exit(2)
}
