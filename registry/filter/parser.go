package filter

import (
	"errors"
	"regexp"
	"regexp/syntax"
	"strconv"
	"strings"
)

// maxDepth bounds the nesting of parentheses, so that a hostile expression cannot make the
// recursive parser or evaluator use unbounded stack. go-bexpr has no such limit.
const maxDepth = 100

// The AST. Chains of "and"/"or" are flat lists: associativity does not change the result and
// flat lists keep recursion depth down to the parenthesis depth.
type (
	node    any // orNode, andNode, notNode or *matchNode
	orNode  []node
	andNode []node
	notNode struct{ x node }
)

type matchOp uint8

const (
	opEqual      matchOp = iota // sel == v
	opNotEqual                  // sel != v
	opIn                        // v in sel, sel contains v
	opNotIn                     // v not in sel, sel not contains v
	opIsEmpty                   // sel is empty
	opIsNotEmpty                // sel is not empty
	opMatches                   // sel matches v
	opNotMatches                // sel not matches v
)

// absent is the result of an operator on a value that is not there: a missing map key or a
// nil pointer. This is go-bexpr's NotPresentDisposition (v0.1.11 and later): nothing equals,
// contains or matches a missing value, and a missing value is empty.
func (op matchOp) absent() bool {
	switch op {
	case opNotEqual, opNotIn, opIsEmpty, opNotMatches:
		return true
	}
	return false
}

type matchNode struct {
	sel   []string // path segments: field names or map keys
	op    matchOp
	spell string         // the operator as written ("in" or "contains"), for messages
	value string         // the raw value; go-bexpr keeps numbers and bare words as text too
	re    *regexp.Regexp // compiled value of matches / not matches
}

type parser struct {
	lex     lexer
	tok     token // the current token
	prevEnd int   // where the previous token ended
	depth   int
}

func (p *parser) advance() {
	p.prevEnd = p.tok.off + len(p.tok.text)
	p.tok = p.lex.next()
}

func (p *parser) isWord(w string) bool { return p.tok.kind == tokWord && p.tok.text == w }

// fail reports the current token as unexpected. A malformed literal reports its own error.
func (p *parser) fail(expected string) error {
	if p.tok.kind == tokError {
		return p.tok.err
	}
	return &SyntaxError{Offset: p.tok.off, Token: p.tok.text, Msg: expected}
}

func parse(expr string) (node, error) {
	p := &parser{lex: lexer{src: expr}}
	p.advance()
	n, err := p.or()
	if err != nil {
		return nil, err
	}
	if p.tok.kind != tokEOF {
		return nil, p.fail(`expected "and", "or" or end of input`)
	}
	return n, nil
}

// or = and { "or" and }
func (p *parser) or() (node, error) {
	var kids orNode
	for {
		n, err := p.and()
		if err != nil {
			return nil, err
		}
		if o, ok := n.(orNode); ok {
			kids = append(kids, o...)
		} else {
			kids = append(kids, n)
		}
		if !p.isWord("or") {
			break
		}
		p.advance()
	}
	if len(kids) == 1 {
		return kids[0], nil
	}
	return kids, nil
}

// and = unary { "and" unary }
func (p *parser) and() (node, error) {
	var kids andNode
	for {
		n, err := p.unary()
		if err != nil {
			return nil, err
		}
		if a, ok := n.(andNode); ok {
			kids = append(kids, a...)
		} else {
			kids = append(kids, n)
		}
		if !p.isWord("and") {
			break
		}
		p.advance()
	}
	if len(kids) == 1 {
		return kids[0], nil
	}
	return kids, nil
}

// unary = { "not" } ( "(" or ")" | match ). A leading "not" is always the operator: go-bexpr
// backtracks and would also read it as a selector (`not == 1`) or a bare value (`not in x`).
func (p *parser) unary() (node, error) {
	negate := false
	for p.isWord("not") {
		negate = !negate
		p.advance()
	}
	var n node
	var err error
	if p.tok.kind == tokLParen {
		if p.depth == maxDepth {
			return nil, p.fail("expression nested too deeply")
		}
		p.depth++
		p.advance()
		if n, err = p.or(); err != nil {
			return nil, err
		}
		if p.tok.kind != tokRParen {
			return nil, p.fail(`expected "and", "or" or ")"`)
		}
		p.depth--
		p.advance()
	} else if n, err = p.match(); err != nil {
		return nil, err
	}
	if !negate {
		return n, nil
	}
	if inner, ok := n.(notNode); ok { // not not x is x, as go-bexpr folds it
		return inner.x, nil
	}
	return notNode{n}, nil
}

// match = path ( "==" | "!=" | "contains" | "not" "contains" | "matches" | "not" "matches" ) value
//
//	| path "is" [ "not" ] "empty"
//	| value ( "in" | "not" "in" ) path
//
// A leading word is a path either way; the operator after it decides whether it was a
// selector or a bare value.
func (p *parser) match() (node, error) {
	switch p.tok.kind {
	case tokNumber, tokString:
		value := p.tok.val
		p.advance()
		if p.isWord("not") {
			p.advance()
			if !p.isWord("in") {
				return nil, p.fail(`expected "in"`)
			}
			return p.inTail(value, opNotIn, "not in")
		}
		if !p.isWord("in") {
			return nil, p.fail(`expected "in" or "not in"`)
		}
		return p.inTail(value, opIn, "in")
	case tokWord:
	default:
		return nil, p.fail("expected an expression")
	}
	sel, err := p.path()
	if err != nil {
		return nil, err
	}
	m := &matchNode{sel: sel}
	switch {
	case p.tok.kind == tokEq:
		m.op, m.spell = opEqual, "=="
	case p.tok.kind == tokNe:
		m.op, m.spell = opNotEqual, "!="
	case p.isWord("contains"):
		m.op, m.spell = opIn, "contains"
	case p.isWord("matches"):
		m.op, m.spell = opMatches, "matches"
	case p.isWord("in"):
		return p.inTail(strings.Join(sel, "."), opIn, "in")
	case p.isWord("is"):
		p.advance()
		m.op, m.spell = opIsEmpty, "is empty"
		if p.isWord("not") {
			m.op, m.spell = opIsNotEmpty, "is not empty"
			p.advance()
		}
		if !p.isWord("empty") {
			return nil, p.fail(`expected "empty"`)
		}
		p.advance()
		return m, nil
	case p.isWord("not"):
		p.advance()
		switch {
		case p.isWord("contains"):
			m.op, m.spell = opNotIn, "not contains"
		case p.isWord("matches"):
			m.op, m.spell = opNotMatches, "not matches"
		case p.isWord("in"):
			return p.inTail(strings.Join(sel, "."), opNotIn, "not in")
		default:
			return nil, p.fail(`expected "in", "contains" or "matches"`)
		}
	default:
		return nil, p.fail("expected an operator")
	}
	p.advance()
	return p.value(m)
}

// inTail parses the selector after "in" or "not in"; the current token is "in".
func (p *parser) inTail(value string, op matchOp, spell string) (node, error) {
	p.advance()
	if p.tok.kind != tokWord {
		return nil, p.fail("expected a selector")
	}
	sel, err := p.path()
	if err != nil {
		return nil, err
	}
	return &matchNode{sel: sel, op: op, spell: spell, value: value}, nil
}

// value = path | number | string. A bare path as a value is its segments joined by dots,
// as in go-bexpr: `Service.Tags contains v1.beta` looks for "v1.beta".
func (p *parser) value(m *matchNode) (node, error) {
	start := p.tok
	switch start.kind {
	case tokWord:
		sel, err := p.path()
		if err != nil {
			return nil, err
		}
		m.value = strings.Join(sel, ".")
	case tokNumber, tokString:
		m.value = start.val
		p.advance()
	default:
		return nil, p.fail("expected a value")
	}
	if m.op == opMatches || m.op == opNotMatches {
		re, err := regexp.Compile(m.value)
		if err != nil {
			msg := err.Error()
			var se *syntax.Error
			if errors.As(err, &se) {
				msg = se.Code.String()
			}
			text := p.lex.src[start.off:p.prevEnd]
			return nil, &SyntaxError{Offset: start.off, Token: text, Msg: "invalid regular expression: " + msg}
		}
		m.re = re
	}
	return m, nil
}

// path = word { "." word | "[" string "]" }, with no whitespace before "." or "[" (as in
// go-bexpr; whitespace inside the brackets is allowed).
func (p *parser) path() ([]string, error) {
	sel := []string{p.tok.text}
	p.advance()
	for {
		switch {
		case p.tok.kind == tokDot && !p.tok.spaced:
			p.advance()
			if p.tok.kind != tokWord || p.tok.spaced {
				return nil, p.fail(`expected a name after "."`)
			}
			sel = append(sel, p.tok.text)
			p.advance()
		case p.tok.kind == tokLBracket && !p.tok.spaced:
			p.advance()
			if p.tok.kind != tokString {
				return nil, p.fail("expected a quoted key")
			}
			sel = append(sel, p.tok.val)
			p.advance()
			if p.tok.kind != tokRBracket {
				return nil, p.fail(`expected "]"`)
			}
			p.advance()
		default:
			return sel, nil
		}
	}
}

// Operator precedence for printing: a list is parenthesized inside a tighter operator.
const (
	precOr = 1 + iota
	precAnd
	precNot
)

func format(b *strings.Builder, n node, outer int) {
	switch n := n.(type) {
	case orNode:
		formatList(b, n, " or ", precOr, outer)
	case andNode:
		formatList(b, n, " and ", precAnd, outer)
	case notNode:
		b.WriteString("not ")
		format(b, n.x, precNot)
	case *matchNode:
		n.format(b)
	}
}

func formatList(b *strings.Builder, kids []node, sep string, prec, outer int) {
	if outer > prec {
		b.WriteByte('(')
	}
	for i, k := range kids {
		if i > 0 {
			b.WriteString(sep)
		}
		format(b, k, prec)
	}
	if outer > prec {
		b.WriteByte(')')
	}
}

// format writes the canonical form: selector first, values always double-quoted,
// `contains` rather than `in`.
func (m *matchNode) format(b *strings.Builder) {
	writeSelector(b, m.sel)
	switch m.op {
	case opIsEmpty:
		b.WriteString(" is empty")
		return
	case opIsNotEmpty:
		b.WriteString(" is not empty")
		return
	}
	b.WriteString([...]string{
		opEqual:      " == ",
		opNotEqual:   " != ",
		opIn:         " contains ",
		opNotIn:      " not contains ",
		opMatches:    " matches ",
		opNotMatches: " not matches ",
	}[m.op])
	b.WriteString(strconv.Quote(m.value))
}

// writeSelector writes segments that are identifiers after a dot and any other map key in
// brackets: Service.Meta["build-id"]. The first segment is always an identifier.
func writeSelector(b *strings.Builder, sel []string) {
	for i, s := range sel {
		switch {
		case i == 0:
			b.WriteString(s)
		case isIdentifier(s):
			b.WriteByte('.')
			b.WriteString(s)
		default:
			b.WriteByte('[')
			b.WriteString(strconv.Quote(s))
			b.WriteByte(']')
		}
	}
}

func selectorString(sel []string) string {
	var b strings.Builder
	writeSelector(&b, sel)
	return b.String()
}

func isIdentifier(s string) bool {
	if s == "" || !isLetter(s[0]) {
		return false
	}
	for i := 1; i < len(s); i++ {
		if !isIdent(s[i]) {
			return false
		}
	}
	return true
}
