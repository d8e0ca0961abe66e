// Package filter implements the expression language of Consul's `?filter=` query parameter
// (go-bexpr), without depending on go-bexpr.
//
// Every Consul release up to at least 1.15 (and the 1.14 the tests run against) builds its
// filters with go-bexpr v0.1.2; later go-bexpr versions rewrote evaluation on
// pointerstructure, which no longer reaches through slices (so `Checks.Status` would break).
// This package follows v0.1.2, except where noted below.
//
// # Grammar
//
//	expr     = and { "or" and }
//	and      = unary { "and" unary }
//	unary    = { "not" } ( "(" expr ")" | match )
//	match    = selector ( "==" | "!=" ) value
//	         | selector [ "not" ] ( "contains" | "matches" ) value
//	         | selector "is" [ "not" ] "empty"
//	         | value [ "not" ] "in" selector
//	selector = name { "." name | "[" string "]" }     no whitespace before "." or "["
//	value    = selector | number | string              a selector as a value is its text: a.b
//	name     = [A-Za-z][A-Za-z0-9_]*
//	number   = -?(0|[1-9][0-9]*)(\.[0-9]+)?             followed by whitespace, ")" or the end
//	string   = "..." with Go escapes | `...` raw
//
// "not" binds tighter than "and", which binds tighter than "or". Keywords are lower case.
// Numbers, bare words and strings are all just text until compared: `Port == 80`,
// `Port == "80"` and `Port == "0x50"` are the same test.
//
// # Evaluation
//
// Selectors name exported Go fields (or the names in a `bexpr:"..."` tag; `bexpr:"-"` hides
// a field, as consul/api does for AgentService.Namespace), then map keys. An embedded struct
// is a field named after its type; its fields are not promoted. Pointers are followed. What each operator accepts depends on the
// Go type at the end of the selector; anything else is an error from Validate or Match:
//
//   - string: all operators. in/contains is a substring test, matches a Go regexp
//     (unanchored) search.
//   - bool, integers, floats: == and !=. The value is converted to the field's kind with
//     strconv (ParseBool; ParseInt/ParseUint in base 0, so "0x1F" works; ParseFloat); a value
//     that does not convert is an error naming the selector.
//   - slice or array of a scalar: in/contains (element equality), is empty, is not empty.
//   - map with string keys: in/contains (key membership), is empty, is not empty.
//   - any other slice, array or map: is empty, is not empty. Structs: nothing.
//
// A selector that continues past a slice or array of structs or maps is tested against
// every element and holds if it holds for ANY element (go-bexpr v0.1.2; Consul's maintainers
// note in hashicorp/consul#9777 that `Checks.Status == passing` needs only one passing check). Each element is tested with the
// operator as written, so `Checks.Status != passing` means "some check is not passing", and
// "no check is critical" is `not Checks.Status == critical`. Over an empty slice every such
// test is false, whatever the operator.
//
// A missing map key or a nil pointer on the path is an absent value: ==, in/contains,
// matches and is not empty are false; !=, not in/not contains, not matches and is empty are
// true (go-bexpr's NotPresentDisposition). So on a service without a "version" meta key,
// `Service.Meta.version == "1"` is false and `Service.Meta.version is empty` is true.
//
// # Differences from go-bexpr v0.1.2 (Consul)
//
// We accept a little more, and we differ on one result:
//
//   - `matches` on a missing map key is false here; v0.1.2 returns true (both `matches` and
//     `not matches` hold). Later go-bexpr versions fixed this to false; we follow the fix.
//   - `is empty`/`is not empty` work on strings (v0.1.2 rejects them; later versions accept).
//   - Escaped quotes (`"a\"b"`) are allowed in double-quoted strings (v0.1.2 ends the
//     literal at the first quote, so it never accepts them).
//   - Whitespace is needed only where two words would run together: `not(...)`,
//     `(a)or(b)` and `Tags contains"x"` parse here but not in go-bexpr.
//   - `in`/`contains` also works on slices of pointers to scalars.
//   - Nil pointers are absent values rather than evaluation errors.
//   - A leading `not` is always the operator, so the word "not" cannot open a match as a
//     selector or a bare value: `not in Tags` is a syntax error here, while go-bexpr
//     backtracks and reads it as `"not" in Tags`. Parentheses nest at most 100 deep.
//
// A parsed Filter is immutable and safe for concurrent use. It compiles itself once per Go
// type it is matched against (resolving field names and converting values) and caches the
// result, so Match does no parsing, no name lookups and, on the common paths, no allocation.
package filter

import (
	"errors"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"sync"
)

// Filter is a parsed expression.
type Filter struct {
	root  node
	progs sync.Map // reflect.Type → *compiled
}

// SyntaxError reports where an expression does not parse.
type SyntaxError struct {
	Offset int    // byte offset of the offending token
	Token  string // its source text; "" at the end of the input
	Msg    string // what was expected, or what is wrong with the token
}

func (e *SyntaxError) Error() string {
	tok := "end of input"
	if e.Token != "" {
		t := e.Token
		if len(t) > 40 {
			t = t[:40] + "..."
		}
		tok = strconv.Quote(t)
	}
	return fmt.Sprintf("filter: at offset %d: unexpected %s (%s)", e.Offset, tok, e.Msg)
}

// Parse parses an expression. Errors are *SyntaxError and name the offending token and its
// byte offset, e.g.
//
//	filter: at offset 14: unexpected "==" (expected a value)
//
// An invalid regular expression after `matches` is a syntax error too.
func Parse(expr string) (*Filter, error) {
	n, err := parse(expr)
	if err != nil {
		return nil, err
	}
	return &Filter{root: n}, nil
}

// String returns the canonical form of the expression: values double-quoted, `contains`
// instead of `in`, map keys that are not names in brackets, and only the parentheses that
// precedence needs. Parsing it gives the same String. A nil Filter returns "".
func (f *Filter) String() string {
	if f == nil {
		return ""
	}
	var b strings.Builder
	format(&b, f.root, 0)
	return b.String()
}

// Validate checks the filter against values of type t (a struct, a map with string keys, or a
// pointer to one): every selector must exist, every operator must apply to the type it
// selects, and every value must convert to it. The error names the selector, e.g.
// `filter: unknown selector "Service.Bogus"`. Match does the same check on first use of a type.
func (f *Filter) Validate(t reflect.Type) error {
	if t == nil {
		return errors.New("filter: cannot validate against a nil type")
	}
	_, err := f.program(t)
	return err
}

// Match reports whether v (a struct, a map with string keys, or a pointer to one) satisfies
// the filter. It returns an error only when the filter does not fit v's type (see Validate).
// A nil *Filter matches everything.
func (f *Filter) Match(v any) (bool, error) {
	if f == nil {
		return true, nil
	}
	rv := reflect.ValueOf(v)
	if !rv.IsValid() {
		return false, errors.New("filter: cannot match a nil value")
	}
	prog, err := f.program(rv.Type())
	if err != nil {
		return false, err
	}
	for rv.Kind() == reflect.Pointer {
		if rv.IsNil() {
			return false, fmt.Errorf("filter: cannot match a nil %s", rv.Type())
		}
		rv = rv.Elem()
	}
	return prog.eval(rv), nil
}

func (f *Filter) program(t reflect.Type) (program, error) {
	c, ok := f.progs.Load(t)
	if !ok {
		prog, err := compile(f.root, t)
		c, _ = f.progs.LoadOrStore(t, &compiled{prog: prog, err: err})
	}
	cc := c.(*compiled)
	return cc.prog, cc.err
}
