package proxy

import (
	"errors"
	"strings"

	"golang.org/x/net/http/httpguts"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// h2FrameReader reads frames as x/net's Framer does with ReadMetaHeaders set: a HEADERS
// frame comes back as a MetaHeadersFrame, its CONTINUATION frames read and its block
// decoded and checked. The Framer allocates a MetaHeadersFrame, two closures and a
// growing field slice for every block; here one MetaHeadersFrame, its field slice and the
// decoder's callback serve every block of the connection. The MetaHeadersFrame returned
// is valid until the next ReadFrame. Only the connection's reader goroutine uses it.
//
// The checks are x/net's (frame.go, readMetaFrame): field values without CR, LF or NUL,
// lower-case token names, no pseudo-header after a regular one, known and unduplicated
// pseudo-headers of one kind (request or response); the header list size limit (over it
// the frame is Truncated, far over it the connection fails); HPACK errors are connection
// errors (COMPRESSION_ERROR), malformed fields stream errors (PROTOCOL_ERROR).
type h2FrameReader struct {
	fr  *http2.Framer
	dec *hpack.Decoder
	max uint32 // header list size limit
	mh  http2.MetaHeadersFrame

	// The block being decoded.
	headersRemain  uint32
	trailersRemain uint32
	sawRegular     bool
	invalid        error
}

var (
	errH2PseudoAfterRegular = errors.New("proxy: http2 pseudo header field after regular")
	errH2MixedPseudo        = errors.New("proxy: http2 mix of request and response pseudo headers")
)

// newH2FrameReader reads fr's frames, decoding header blocks up to maxList bytes (the
// SETTINGS_MAX_HEADER_LIST_SIZE advertised; its HPACK table is the default 4096 bytes).
func newH2FrameReader(fr *http2.Framer, maxList uint32) *h2FrameReader {
	r := &h2FrameReader{fr: fr, max: maxList}
	r.dec = hpack.NewDecoder(4096, r.emit)
	if n := int(maxList); n > 0 {
		r.dec.SetMaxStringLength(n)
	}
	return r
}

// ReadFrame returns the next frame; a header block as the reader's MetaHeadersFrame.
func (r *h2FrameReader) ReadFrame() (http2.Frame, error) {
	f, err := r.fr.ReadFrame()
	if err != nil {
		return nil, err
	}
	if hf, ok := f.(*http2.HeadersFrame); ok {
		mh, err := r.readBlock(hf)
		if err != nil {
			return nil, err
		}
		return mh, nil
	}
	return f, nil
}

// readBlock decodes the header block hf begins, reading its CONTINUATION frames (the
// Framer makes sure nothing else comes between).
func (r *h2FrameReader) readBlock(hf *http2.HeadersFrame) (*http2.MetaHeadersFrame, error) {
	mh := &r.mh
	clear(mh.Fields) // the previous block's strings
	mh.HeadersFrame, mh.Fields, mh.Truncated = hf, mh.Fields[:0], false
	r.headersRemain, r.trailersRemain = r.max, r.max
	r.sawRegular, r.invalid = false, nil
	r.dec.SetEmitEnabled(true)
	frag, ended := hf.HeaderBlockFragment(), hf.HeadersEnded()
	for {
		// Far over the limit, or anything after an invalid field: not worth decoding.
		if int64(len(frag)) > 2*(int64(r.headersRemain)+int64(r.trailersRemain)) || r.invalid != nil {
			return nil, http2.ConnectionError(http2.ErrCodeProtocol)
		}
		if _, err := r.dec.Write(frag); err != nil {
			return nil, http2.ConnectionError(http2.ErrCodeCompression)
		}
		if ended {
			break
		}
		f, err := r.fr.ReadFrame()
		if err != nil {
			return nil, err
		}
		cf := f.(*http2.ContinuationFrame) // the Framer's frame order check guarantees it
		frag, ended = cf.HeaderBlockFragment(), cf.HeadersEnded()
	}
	if err := r.dec.Close(); err != nil {
		return nil, http2.ConnectionError(http2.ErrCodeCompression)
	}
	if r.invalid != nil {
		return nil, http2.StreamError{StreamID: hf.StreamID, Code: http2.ErrCodeProtocol, Cause: r.invalid}
	}
	if err := checkPseudos(mh.PseudoFields()); err != nil {
		return nil, http2.StreamError{StreamID: hf.StreamID, Code: http2.ErrCodeProtocol, Cause: err}
	}
	return mh, nil
}

// emit takes one decoded field.
func (r *h2FrameReader) emit(hf hpack.HeaderField) {
	if !httpguts.ValidHeaderFieldValue(hf.Value) {
		r.invalid = errors.New("proxy: http2 invalid value of header field " + hf.Name)
	}
	if strings.HasPrefix(hf.Name, ":") {
		if r.sawRegular {
			r.invalid = errH2PseudoAfterRegular
		}
	} else {
		r.sawRegular = true
		if !validWireName(hf.Name) {
			r.invalid = errors.New("proxy: http2 invalid header field name " + hf.Name)
		}
	}
	if r.invalid != nil {
		r.dec.SetEmitEnabled(false)
		return
	}
	remain := &r.headersRemain
	size := hf.Size()
	if hf.Name == "trailer" {
		// As x/net: each declared trailer counts as a field of its own.
		remain = &r.trailersRemain
		n := strings.Count(hf.Value, ",") + 1
		size = uint32(len(hf.Value)-n+1) + uint32(n)*hpack.HeaderField{}.Size()
	}
	if size > *remain {
		r.dec.SetEmitEnabled(false)
		r.mh.Truncated = true
		r.headersRemain, r.trailersRemain = 0, 0
		return
	}
	*remain -= size
	r.mh.Fields = append(r.mh.Fields, hf)
}

// validWireName reports whether a field name is a token without upper case letters.
func validWireName(v string) bool {
	if v == "" {
		return false
	}
	for i := 0; i < len(v); i++ {
		c := v[i]
		if !httpguts.IsTokenRune(rune(c)) || 'A' <= c && c <= 'Z' {
			return false
		}
	}
	return true
}

// checkPseudos refuses unknown or repeated pseudo-headers and a mix of request and
// response ones.
func checkPseudos(pf []hpack.HeaderField) error {
	var isRequest, isResponse bool
	for i, hf := range pf {
		switch hf.Name {
		case ":method", ":path", ":scheme", ":authority", ":protocol":
			isRequest = true
		case ":status":
			isResponse = true
		default:
			return errors.New("proxy: http2 invalid pseudo-header " + hf.Name)
		}
		for _, prev := range pf[:i] {
			if hf.Name == prev.Name {
				return errors.New("proxy: http2 duplicate pseudo-header " + hf.Name)
			}
		}
	}
	if isRequest && isResponse {
		return errH2MixedPseudo
	}
	return nil
}
