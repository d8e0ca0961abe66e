package proxy

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
)

// describeResponse is what a proxy takes from a response: status, version, fields,
// length, close, the body and what is left on the connection after it.
func describeResponse(res *http.Response, br *bufio.Reader) string {
	body, err := io.ReadAll(res.Body)
	rest, _ := io.ReadAll(br)
	return fmt.Sprintf("%q %d %s %d.%d close=%v len=%d te=%v trailer=%v header=%v body=%q err=%v rest=%q",
		res.Status, res.StatusCode, res.Proto, res.ProtoMajor, res.ProtoMinor, res.Close, res.ContentLength,
		res.TransferEncoding, res.Trailer, sortedHeader(res.Header), body, err, rest)
}

func sortedHeader(h http.Header) string {
	var b strings.Builder
	h.Write(&b) // sorted by key
	return b.String()
}

// fastAndStandard reads raw with readResponseFast and with http.ReadResponse. fast is ""
// when the fast path declined (and then it must have consumed nothing).
func fastAndStandard(t *testing.T, raw, method string) (fast, std string) {
	t.Helper()
	req, _ := http.NewRequest(method, "http://app/", nil)
	br := bufio.NewReaderSize(strings.NewReader(raw), 4096)
	br.Peek(1)
	before := br.Buffered()
	if res, ok := readResponseFast(br, req); ok {
		if res.Request != req {
			t.Error("Response.Request is not the request")
		}
		if res.ContentLength == 0 {
			res.Body = http.NoBody
		} else {
			res.Body = &fixedBody{br: br, n: res.ContentLength}
		}
		fast = describeResponse(res, br)
	} else if br.Buffered() != before {
		t.Errorf("declined after consuming %d bytes", before-br.Buffered())
	}
	sbr := bufio.NewReaderSize(strings.NewReader(raw), 4096)
	res, err := http.ReadResponse(sbr, req)
	if err != nil {
		return fast, "error"
	}
	return fast, describeResponse(res, sbr)
}

func TestReadResponseFast(t *testing.T) {
	const ok = "HTTP/1.1 200 OK\r\n"
	for _, tc := range []struct {
		name, raw, method string
		fast              bool // the fast path must take it
	}{
		{"plain", ok + "Content-Type: text/plain\r\nContent-Length: 5\r\nDate: Wed, 26 Nov 2026 23:00:00 GMT\r\n\r\nhello", "GET", true},
		{"next response buffered", ok + "Content-Length: 2\r\n\r\nhiHTTP/1.1 204 No Content\r\n\r\n", "GET", true},
		{"empty body", ok + "Content-Length: 0\r\n\r\n", "POST", true},
		{"repeated fields, odd case, white space", ok + "x-a: 1\r\nX-A:2\r\nset-COOKIE:  a=b \t\r\ncontent-length: 3\r\n\r\nabc", "GET", true},
		{"no reason", "HTTP/1.1 201\r\nContent-Length: 1\r\n\r\nx", "PUT", true},
		{"odd reason", "HTTP/1.1 599 Whatever it is\r\nContent-Length: 1\r\n\r\nx", "GET", true},
		{"leading zeros", ok + "Content-Length: 007\r\n\r\n1234567", "GET", true},
		{"obs-text", ok + "X-Name: caf\xc3\xa9\r\nContent-Length: 1\r\n\r\nx", "GET", true},
		{"short body", ok + "Content-Length: 10\r\n\r\nabc", "GET", true},
		{"HEAD", ok + "Content-Length: 10\r\n\r\n", "HEAD", false},
		{"chunked", ok + "Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-T: 1\r\n\r\n", "GET", false},
		{"close-delimited", ok + "Content-Type: text/plain\r\n\r\nuntil the end", "GET", false},
		{"connection close", ok + "Connection: close\r\nContent-Length: 1\r\n\r\nx", "GET", false},
		{"connection close listed", ok + "Connection: foo, CLOSE \r\nContent-Length: 1\r\n\r\nx", "GET", false},
		{"nginx", ok + "Server: nginx/1.22.1\r\nDate: Wed, 26 Nov 2026 23:00:00 GMT\r\nContent-Type: text/plain\r\n" +
			"Content-Length: 3\r\nConnection: keep-alive\r\n\r\nabc", "GET", true},
		{"trailer declared", ok + "Trailer: X-T\r\nContent-Length: 1\r\n\r\nx", "GET", false},
		{"pragma", ok + "Pragma: no-cache\r\nContent-Length: 1\r\n\r\nx", "GET", false},
		{"HTTP/1.0", "HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nx", "GET", false},
		{"interim", "HTTP/1.1 100 Continue\r\n\r\n" + ok + "Content-Length: 1\r\n\r\nx", "GET", false},
		{"no content", "HTTP/1.1 204 No Content\r\nContent-Length: 3\r\n\r\n", "GET", false},
		{"not modified", "HTTP/1.1 304 Not Modified\r\nContent-Length: 3\r\n\r\n", "GET", false},
		{"two lengths", ok + "Content-Length: 1\r\nContent-Length: 1\r\n\r\nx", "GET", false},
		{"conflicting lengths", ok + "Content-Length: 1\r\nContent-Length: 2\r\n\r\nxy", "GET", false},
		{"signed length", ok + "Content-Length: +1\r\n\r\nx", "GET", false},
		{"length list", ok + "Content-Length: 1, 1\r\n\r\nx", "GET", false},
		{"folded", ok + "X-A: 1\r\n 2\r\nContent-Length: 1\r\n\r\nx", "GET", false},
		{"bare LF", "HTTP/1.1 200 OK\nContent-Length: 1\n\nx", "GET", false},
		{"space before colon", ok + "X-A : 1\r\nContent-Length: 1\r\n\r\nx", "GET", false},
		{"control in value", ok + "X-A: a\x01b\r\nContent-Length: 1\r\n\r\nx", "GET", false},
		{"incomplete head", ok + "Content-Length: 1\r\n", "GET", false},
		{"bad status", "HTTP/1.1 2x0 OK\r\nContent-Length: 1\r\n\r\nx", "GET", false},
		{"two spaces", "HTTP/1.1  200 OK\r\nContent-Length: 1\r\n\r\nx", "GET", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fast, std := fastAndStandard(t, tc.raw, tc.method)
			if tc.fast && fast == "" {
				t.Fatalf("fast path declined; http.ReadResponse: %s", std)
			}
			if !tc.fast && fast != "" {
				t.Fatalf("fast path took it: %s", fast)
			}
			if fast != "" && fast != std {
				t.Errorf("fast path:        %s\nhttp.ReadResponse: %s", fast, std)
			}
		})
	}
}

// The fast path allocates the Response, its head, the header map and one value array.
func TestReadResponseFastAllocs(t *testing.T) {
	raw := "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\nDate: Wed, 26 Nov 2026 23:00:00 GMT\r\n\r\nhello"
	req, _ := http.NewRequest("GET", "http://app/", nil)
	r := strings.NewReader(raw)
	br := bufio.NewReader(r)
	n := testing.AllocsPerRun(100, func() {
		r.Reset(raw)
		br.Reset(r)
		br.Peek(1)
		if _, ok := readResponseFast(br, req); !ok {
			t.Fatal("declined")
		}
	})
	if n > 5 {
		t.Errorf("%.0f allocations per head, want at most 5", n)
	}
}

// FuzzReadResponseFast: whatever the fast path takes, http.ReadResponse reads the same.
func FuzzReadResponseFast(f *testing.F) {
	f.Add("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello", false)
	f.Add("HTTP/1.1 404 Not Found\r\nX-A: 1\r\nx-a: 2\r\nContent-Length: 0\r\n\r\n", true)
	f.Add("HTTP/1.1 200\r\nContent-Length: 3\r\nPragma: x\r\n\r\nabc", false)
	f.Add("HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Length: 1\r\nConnection: keep-alive, Close\r\n\r\nx", false)
	f.Fuzz(func(t *testing.T, raw string, head bool) {
		method := "GET"
		if head {
			method = "HEAD"
		}
		fast, std := fastAndStandard(t, raw, method)
		if fast != "" && fast != std {
			t.Errorf("fast path:        %s\nhttp.ReadResponse: %s", fast, std)
		}
	})
}
