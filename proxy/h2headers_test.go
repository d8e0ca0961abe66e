package proxy

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"testing"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// h2Block encodes fields as one header block.
func h2Block(fields ...string) []byte {
	var buf bytes.Buffer
	enc := hpack.NewEncoder(&buf)
	for i := 0; i+1 < len(fields); i += 2 {
		enc.WriteField(hpack.HeaderField{Name: fields[i], Value: fields[i+1]})
	}
	return buf.Bytes()
}

// h2HeaderFrames writes block on stream 1 as HEADERS and CONTINUATION frames of at most
// frag bytes each, then a PING so that a reader has something after the block.
func h2HeaderFrames(block []byte, frag int) []byte {
	var buf bytes.Buffer
	fr := http2.NewFramer(&buf, nil)
	first := true
	for first || len(block) > 0 {
		n := min(len(block), frag)
		p := block[:n]
		block = block[n:]
		if first {
			fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: p, EndStream: true, EndHeaders: len(block) == 0})
			first = false
		} else {
			fr.WriteContinuation(1, len(block) == 0, p)
		}
	}
	fr.WritePing(false, [8]byte{})
	return buf.Bytes()
}

// h2Outcome describes what reading the first frame of wire gave: the fields, Truncated,
// or the error's kind and code.
func h2Outcome(f http2.Frame, err error) string {
	var se http2.StreamError
	var ce http2.ConnectionError
	switch {
	case errors.As(err, &se):
		return fmt.Sprintf("stream error %v on %d", se.Code, se.StreamID)
	case errors.As(err, &ce):
		return fmt.Sprintf("connection error %v", http2.ErrCode(ce))
	case err != nil:
		return "error " + err.Error()
	}
	mh, ok := f.(*http2.MetaHeadersFrame)
	if !ok {
		return fmt.Sprintf("frame %T", f)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "stream %d end %v truncated %v:", mh.StreamID, mh.StreamEnded(), mh.Truncated)
	for _, hf := range mh.Fields {
		fmt.Fprintf(&b, " %s=%q", hf.Name, hf.Value)
	}
	return b.String()
}

// readBoth reads wire's first frame with h2FrameReader and with x/net's Framer
// (ReadMetaHeaders), then the frame after it, and returns both outcomes.
func readBoth(wire []byte, maxList uint32) (ours, theirs string) {
	fr := http2.NewFramer(nil, bytes.NewReader(wire))
	fr.SetReuseFrames()
	rd := newH2FrameReader(fr, maxList)
	f, err := rd.ReadFrame()
	ours = h2Outcome(f, err)
	if err == nil {
		next, err := rd.ReadFrame()
		ours += fmt.Sprintf(" | next %T %v", next, err)
	}

	xfr := http2.NewFramer(nil, bytes.NewReader(wire))
	xfr.MaxHeaderListSize = maxList
	xfr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	f, err = xfr.ReadFrame()
	theirs = h2Outcome(f, err)
	if err == nil {
		next, err := xfr.ReadFrame()
		theirs += fmt.Sprintf(" | next %T %v", next, err)
	}
	return ours, theirs
}

// The reader decodes header blocks as x/net's Framer does, including the refusals.
func TestH2FrameReaderMatchesFramer(t *testing.T) {
	req := []string{":method", "GET", ":scheme", "https", ":path", "/a", ":authority", "svc"}
	long := strings.Repeat("v", 300)
	for _, tc := range []struct {
		name string
		wire []byte
		max  uint32
		want string // a substring of the outcome
	}{
		{"request", h2HeaderFrames(h2Block(append(req, "accept", "*/*", "x-id", "7")...), 1<<10), 1 << 20,
			`:path="/a" :authority="svc" accept="*/*" x-id="7" | next *http2.PingFrame`},
		{"continuations", h2HeaderFrames(h2Block(append(req, "x-long", long, "x-b", "2")...), 7), 1 << 20,
			`x-long="` + long + `" x-b="2" | next *http2.PingFrame`},
		{"response", h2HeaderFrames(h2Block(":status", "200", "content-length", "3"), 100), 1 << 20,
			`:status="200" content-length="3"`},
		{"trailers", h2HeaderFrames(h2Block("grpc-status", "0"), 100), 1 << 20, `grpc-status="0"`},
		{"pseudo after regular", h2HeaderFrames(h2Block("x-a", "1", ":status", "200"), 100), 1 << 20,
			"stream error PROTOCOL_ERROR on 1"},
		{"upper-case name", h2HeaderFrames(h2Block(append(req, "X-Up", "1")...), 100), 1 << 20,
			"stream error PROTOCOL_ERROR"},
		{"bad value", h2HeaderFrames(h2Block(append(req, "x-a", "a\nb")...), 100), 1 << 20,
			"stream error PROTOCOL_ERROR"},
		{"unknown pseudo", h2HeaderFrames(h2Block(":bogus", "1"), 100), 1 << 20, "stream error PROTOCOL_ERROR"},
		{"duplicate pseudo", h2HeaderFrames(h2Block(":status", "200", ":status", "204"), 100), 1 << 20,
			"stream error PROTOCOL_ERROR"},
		{"mixed pseudo", h2HeaderFrames(h2Block(":status", "200", ":path", "/"), 100), 1 << 20,
			"stream error PROTOCOL_ERROR"},
		{"over the limit", h2HeaderFrames(h2Block(append(req, "x-a", long, "x-b", long)...), 1<<10), 500,
			"truncated true"},
		{"far over the limit", h2HeaderFrames(h2Block(append(req, "x-a", long, "x-b", long, "x-c", long)...), 1<<10), 200,
			"connection error PROTOCOL_ERROR"},
		{"trailer declaration over the limit", h2HeaderFrames(h2Block(append(req, "trailer", "a,b,c,d,e,f,g,h,i,j,k,l,m,n,o,p,q,r,s,t")...), 1<<10), 400,
			"truncated true"},
		{"bad hpack", h2HeaderFrames([]byte{0xff, 0xff, 0xff, 0xff, 0xff}, 100), 1 << 20,
			"connection error COMPRESSION_ERROR"},
		{"truncated hpack", h2HeaderFrames(h2Block(append(req, "x-a", long)...)[:40], 100), 1 << 20,
			"connection error COMPRESSION_ERROR"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ours, theirs := readBoth(tc.wire, tc.max)
			if ours != theirs {
				t.Errorf("h2FrameReader: %s\nx/net Framer:  %s", ours, theirs)
			}
			if !strings.Contains(ours, tc.want) {
				t.Errorf("got %s, want %s in it", ours, tc.want)
			}
		})
	}

	// A frame other than CONTINUATION inside a block ends the connection.
	var buf bytes.Buffer
	fr := http2.NewFramer(&buf, nil)
	block := h2Block(req...)
	fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block[:3], EndHeaders: false})
	fr.WriteData(1, true, []byte("x"))
	fr.WriteContinuation(1, true, block[3:])
	ours, theirs := readBoth(buf.Bytes(), 1<<20)
	if ours != theirs || !strings.Contains(ours, "PROTOCOL_ERROR") {
		t.Errorf("DATA inside a header block: ours %s, x/net %s", ours, theirs)
	}
}

// The reader's MetaHeadersFrame is reused: the second block's fields replace the first's,
// and the dynamic table carries over between blocks.
func TestH2FrameReaderReuse(t *testing.T) {
	var buf bytes.Buffer
	fr := http2.NewFramer(&buf, nil)
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	for id, v := range []string{"one", "two"} {
		hb.Reset()
		enc.WriteField(hpack.HeaderField{Name: ":status", Value: "200"})
		enc.WriteField(hpack.HeaderField{Name: "x-kept", Value: "same"}) // indexed the second time
		enc.WriteField(hpack.HeaderField{Name: "x-n", Value: v})
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: uint32(2*id + 1), BlockFragment: hb.Bytes(), EndHeaders: true})
	}
	rd := newH2FrameReader(http2.NewFramer(nil, &buf), 1<<20)
	var got []string
	var frames []http2.Frame
	for range 2 {
		f, err := rd.ReadFrame()
		if err != nil {
			t.Fatal(err)
		}
		frames = append(frames, f)
		got = append(got, h2Outcome(f, nil))
	}
	want := []string{
		`stream 1 end false truncated false: :status="200" x-kept="same" x-n="one"`,
		`stream 3 end false truncated false: :status="200" x-kept="same" x-n="two"`,
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("got\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if frames[0] != frames[1] {
		t.Error("a MetaHeadersFrame per block, want one reused")
	}
	if n := testing.AllocsPerRun(100, func() {
		rd.mh.Fields = rd.mh.Fields[:0]
		rd.emit(hpack.HeaderField{Name: "x-a", Value: "1"})
	}); n != 0 {
		t.Errorf("emit allocates %.0f times per field", n)
	}
}

// FuzzH2FrameReader compares the reader with x/net's Framer on arbitrary header blocks.
func FuzzH2FrameReader(f *testing.F) {
	f.Add(h2Block(":method", "GET", ":scheme", "http", ":path", "/", "a", "b"), uint16(1000), uint8(5))
	f.Add(h2Block(":status", "200", "x", strings.Repeat("y", 90)), uint16(60), uint8(16))
	f.Add([]byte{0x3f, 0xe1, 0x1f, 0x82}, uint16(4096), uint8(1)) // a table size update
	f.Fuzz(func(t *testing.T, block []byte, max uint16, frag uint8) {
		wire := h2HeaderFrames(block, int(frag)+1)
		ours, theirs := readBoth(wire, uint32(max)+1)
		if ours != theirs {
			t.Errorf("h2FrameReader: %s\nx/net Framer:  %s", ours, theirs)
		}
	})
}
