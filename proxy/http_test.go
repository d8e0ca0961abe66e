package proxy

import (
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/podmesh/podmesh/lb"
)

// Through two sidecars, an HTTP/1.1 request reaches the app and its answer comes back
// intact, with hop-by-hop headers stripped and X-Forwarded-For added by the inbound side.
func TestHTTPThroughTwoSidecars(t *testing.T) {
	var gotHeader http.Header
	a := startApp(t, "a", func(w http.ResponseWriter, r *http.Request) {
		gotHeader = r.Header.Clone()
		w.Header().Set("Connection", "X-Secret")
		w.Header().Set("X-Secret", "hop")
		w.Header().Set("X-Kept", "yes")
		body, _ := io.ReadAll(r.Body)
		io.WriteString(w, "echo:"+string(body))
	})
	inAddr, _ := startInbound(t, InboundConfig{Service: "a", Protocol: HTTP, App: a.addr})
	upAddr, _ := startUpstream(t, UpstreamConfig{Name: "a"}, []lb.Endpoint{endpoint("a1", inAddr, HTTP)})

	req, _ := http.NewRequest("POST", "http://"+upAddr+"/x?y=1", strings.NewReader("ping"))
	req.Header.Set("Connection", "X-Drop")
	req.Header.Set("X-Drop", "1")
	req.Header.Set("Keep-Alive", "timeout=5")
	req.Header.Set("X-Forwarded-For", "10.9.9.9")
	res, err := client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != 200 || string(body) != "echo:ping" {
		t.Fatalf("got %d %q", res.StatusCode, body)
	}
	if res.Header.Get("X-Secret") != "" || res.Header.Get("X-Kept") != "yes" {
		t.Errorf("response headers: %v", res.Header)
	}
	if gotHeader.Get("X-Drop") != "" || gotHeader.Get("Keep-Alive") != "" {
		t.Errorf("hop-by-hop headers reached the app: %v", gotHeader)
	}
	if xff := gotHeader.Get("X-Forwarded-For"); xff != "10.9.9.9, 127.0.0.1" {
		t.Errorf("X-Forwarded-For = %q", xff)
	}
}
