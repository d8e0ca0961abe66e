package filter

import (
	"strconv"
	"unicode/utf8"
)

type tokKind uint8

const (
	tokEOF      tokKind = iota
	tokWord             // [A-Za-z][A-Za-z0-9_]*: a selector segment, a bare value or a keyword
	tokNumber           // -?(0|[1-9][0-9]*)(\.[0-9]+)?
	tokString           // "..." or `...`; val holds the unquoted text
	tokEq               // ==
	tokNe               // !=
	tokLParen           // (
	tokRParen           // )
	tokLBracket         // [
	tokRBracket         // ]
	tokDot              // .
	tokIllegal          // any other character
	tokError            // a malformed string or number literal; err says why
)

type token struct {
	kind   tokKind
	off    int    // byte offset in the expression
	text   string // source text
	val    string // the value: unquoted for strings, the text otherwise
	spaced bool   // whitespace precedes the token
	err    *SyntaxError
}

// lexer splits an expression into tokens on demand, so that a malformed literal is reported
// only when the parser reaches it and errors come in source order.
type lexer struct {
	src string
	pos int
}

func isSpace(c byte) bool  { return c == ' ' || c == '\t' || c == '\r' || c == '\n' }
func isLetter(c byte) bool { return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' }
func isDigit(c byte) bool  { return '0' <= c && c <= '9' }
func isIdent(c byte) bool  { return isLetter(c) || isDigit(c) || c == '_' }

func (l *lexer) next() token {
	start := l.pos
	for l.pos < len(l.src) && isSpace(l.src[l.pos]) {
		l.pos++
	}
	spaced := l.pos > start
	tok := l.scan()
	tok.spaced = spaced
	return tok
}

func (l *lexer) scan() token {
	start := l.pos
	if start >= len(l.src) {
		return token{kind: tokEOF, off: start}
	}
	c := l.src[start]
	switch {
	case isLetter(c):
		l.pos++
		for l.pos < len(l.src) && isIdent(l.src[l.pos]) {
			l.pos++
		}
		return l.token(tokWord, start)
	case isDigit(c) || c == '-' && start+1 < len(l.src) && isDigit(l.src[start+1]):
		return l.number(start)
	case c == '"':
		return l.quoted(start)
	case c == '`':
		return l.raw(start)
	case (c == '=' || c == '!') && start+1 < len(l.src) && l.src[start+1] == '=':
		l.pos += 2
		if c == '=' {
			return l.token(tokEq, start)
		}
		return l.token(tokNe, start)
	}
	kind := tokIllegal
	switch c {
	case '(':
		kind = tokLParen
	case ')':
		kind = tokRParen
	case '[':
		kind = tokLBracket
	case ']':
		kind = tokRBracket
	case '.':
		kind = tokDot
	}
	_, size := utf8.DecodeRuneInString(l.src[start:])
	l.pos += size
	return l.token(kind, start)
}

func (l *lexer) token(kind tokKind, start int) token {
	text := l.src[start:l.pos]
	return token{kind: kind, off: start, text: text, val: text}
}

func (l *lexer) fail(start int, msg string) token {
	text := l.src[start:l.pos]
	return token{kind: tokError, off: start, text: text, err: &SyntaxError{Offset: start, Token: text, Msg: msg}}
}

// number scans go-bexpr's NumberLiteral, which must be followed by whitespace, ")" or the end.
func (l *lexer) number(start int) token {
	src, p := l.src, start
	if src[p] == '-' {
		p++
	}
	if src[p] == '0' {
		p++
	} else {
		for p < len(src) && isDigit(src[p]) {
			p++
		}
	}
	if p+1 < len(src) && src[p] == '.' && isDigit(src[p+1]) {
		p += 2
		for p < len(src) && isDigit(src[p]) {
			p++
		}
	}
	l.pos = p
	if p == len(src) || isSpace(src[p]) || src[p] == ')' {
		return l.token(tokNumber, start)
	}
	// Take the rest of the malformed literal (at least one more character) for the message.
	_, size := utf8.DecodeRuneInString(src[p:])
	l.pos += size
	for l.pos < len(src) && (isIdent(src[l.pos]) || src[l.pos] == '.') {
		l.pos++
	}
	return l.fail(start, "invalid number")
}

// quoted scans a double-quoted string with Go escapes. go-bexpr ends the literal at the
// first '"' even after a backslash, so `\"` never parses there; here it is an escaped quote.
// Every literal go-bexpr accepts reads the same here.
func (l *lexer) quoted(start int) token {
	src := l.src
	for p := start + 1; p < len(src); p++ {
		switch src[p] {
		case '\\':
			p++
		case '"':
			l.pos = p + 1
			tok := l.token(tokString, start)
			v, err := strconv.Unquote(tok.text)
			if err != nil {
				return l.fail(start, "invalid string literal")
			}
			tok.val = v
			return tok
		}
	}
	l.pos = len(src)
	return l.fail(start, "unterminated string")
}

// raw scans a backtick string: no escapes; carriage returns are dropped, as in Go.
func (l *lexer) raw(start int) token {
	for p := start + 1; p < len(l.src); p++ {
		if l.src[p] == '`' {
			l.pos = p + 1
			tok := l.token(tokString, start)
			tok.val, _ = strconv.Unquote(tok.text) // cannot fail: no backquote inside
			return tok
		}
	}
	l.pos = len(l.src)
	return l.fail(start, "unterminated string")
}
